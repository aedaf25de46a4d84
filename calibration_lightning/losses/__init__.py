"""Loss heads: small components the LightningModule calls once per training batch."""
