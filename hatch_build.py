"""Hatchling build hook: a wheel carries the top-level conf/ inside the package, as ``calibration_lightning/conf``.

An editable install gets no copy: it imports the checkout, whose package finds conf/ beside itself
(``calibration_lightning.bundled.CONF_DIR``), so a stale copy in site-packages can never shadow an edit.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ConfInPackage(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version == "standard":
            build_data["force_include"]["conf"] = "calibration_lightning/conf"
