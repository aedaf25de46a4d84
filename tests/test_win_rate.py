"""Win rate: scoring functions, the local judge on the tiny model, and the OpenAI-compatible judge over HTTP."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from calibration_lightning.recipe import run
from calibration_lightning.winrate.evaluate import WinRate
from calibration_lightning.winrate.judges import JudgeError, LocalJudge, OpenAIJudge, judge_text
from calibration_lightning.winrate.scoring import bootstrap_interval, pair_outcomes, position_bias, summarize
from tests.conftest import TINY_SPLIT


def test_outcomes_ties_and_bias_by_hand():
    first = torch.tensor([0.9, 0.2, 0.8, 0.3])  # P(A) with the candidate shown as A
    second = torch.tensor([0.1, 0.7, 0.9, 0.4])  # P(A) with the reference shown as A
    # prompt 0: candidate wins both orders; 1: loses both; 2: judge picks A twice (tie); 3: picks B twice (tie)
    assert pair_outcomes(first, second).tolist() == [1.0, 0.0, 0.5, 0.5]
    assert position_bias(first, second) == pytest.approx((0.9 + 0.2 + 0.8 + 0.3 + 0.1 + 0.7 + 0.9 + 0.4) / 8 - 0.5)
    lo, hi = bootstrap_interval(torch.tensor([1.0] * 30 + [0.0] * 10))
    assert lo < 0.75 < hi and 0.5 < lo and hi < 0.95
    s = summarize(first, second, torch.tensor([False, False, False, True]), "test")
    assert s["win_rate"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4) and s["n"] == 4 and s["n_identical"] == 1


class FirstPositionJudge:
    name = "always-first"

    def prob_first(self, triples):
        return torch.ones(len(triples))


def test_a_judge_that_always_prefers_the_first_answer_is_caught(tiny_model, tiny_tokenizer):
    items = [(f"Say something about topic {i}.", f"reference answer {i}") for i in range(6)]
    summary, rows = WinRate(items, FirstPositionJudge(), max_new_tokens=4).evaluate("after", tiny_model, tiny_tokenizer)
    assert summary["position_bias"] == pytest.approx(0.5)
    assert summary["win_rate"] == pytest.approx(0.5)
    assert all(r["p_answer_first_wins"] == 1.0 and r["p_reference_first_wins"] == 1.0 for r in rows)


def _judge_reference(model, tokenizer, instruction: str, a: str, b: str) -> float:
    """P("A") written out: the judging prompt in the chat template, softmax over the logits of "A" and "B"."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": judge_text((instruction, a, b), 1500)}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    letters = [tokenizer(text + x, add_special_tokens=False)["input_ids"][-1] for x in "AB"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return float(torch.softmax(logits[letters].float(), -1)[0])


@pytest.mark.slow
def test_local_judge_end_to_end_on_tiny(make_cfg, tmp_path, tiny_model, tiny_tokenizer):
    path = tmp_path / "instructions.jsonl"
    path.write_text(
        "".join(
            json.dumps({"instruction": f"Describe item {i}.", "reference": f"Item {i} is blue."}) + "\n"
            for i in range(6)
        )
    )
    cfg = make_cfg(
        "model=tiny",
        "win_rate=on",
        "win_rate.max_new_tokens=6",
        "win_rate.instructions._target_=calibration_lightning.winrate.instructions.jsonl",
        f"+win_rate.instructions.path={path}",
        *TINY_SPLIT,
    )
    result = run(cfg)
    for phase in ("before", "after"):
        wr = result["win_rate"][phase]
        assert wr["n"] == 6 and wr["judge"] == "local:self"
        assert wr["ci95"][0] <= wr["win_rate"] <= wr["ci95"][1]
        rows = [json.loads(x) for x in (tmp_path / "run" / f"win_rate_{phase}.jsonl").read_text().splitlines()]
        judged = [r for r in rows if not r["identical"]]
        assert judged, "answers differ from the given references, so pairs are judged"
        # the win rate from the written judgments: a win in both orders 1, a loss in both 0, else (or same text) 0.5
        wins = [
            0.5 if r["identical"] else ((r["p_answer_first_wins"] > 0.5) + (r["p_reference_first_wins"] < 0.5)) / 2
            for r in rows
        ]
        assert wr["win_rate"] == pytest.approx(sum(wins) / len(wins), abs=1e-12)
        # the judge (its adapters off: the base model) against P("A") computed by hand for both orders
        r = judged[0]
        for order, p in (
            ((r["answer"], r["reference"]), "p_answer_first_wins"),
            ((r["reference"], r["answer"]), "p_reference_first_wins"),
        ):
            expected = _judge_reference(tiny_model, tiny_tokenizer, r["instruction"], *order)
            assert r[p] == pytest.approx(expected, abs=2e-6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["win_rate"]["after"]["win_rate"] == result["win_rate"]["after"]["win_rate"]


def test_self_reference_gives_exact_half_before_training(tiny_model, tiny_tokenizer):
    judge = LocalJudge()
    judge.bind(tiny_model, tiny_tokenizer, "cpu")
    wr = WinRate([(f"Name a colour, {i}.", None) for i in range(4)], judge, max_new_tokens=4)
    summary, _ = wr.evaluate("before", tiny_model, tiny_tokenizer)
    assert summary["win_rate"] == 0.5 and summary["n_identical"] == 4


# --- the OpenAI-compatible judge against a real HTTP server on 127.0.0.1 --------------------------------------------


class ChatServer:
    """Implements the chat-completions subset we use. Behaviour per request is scripted by the test."""

    def __init__(self):
        self.requests, self.script = [], []  # script: list of ("ok"|"logprobs"|"500"|"400"|"slow")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                action = server.script.pop(0) if server.script else "ok"
                if action == "slow":
                    time.sleep(1.0)
                if action in ("500", "400"):
                    self.send_response(int(action))
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted"}')
                    return
                prompt = body["messages"][0]["content"]
                better = "A" if "GOOD" in prompt.split("Response B:")[0] else "B"
                choice = {"index": 0, "message": {"role": "assistant", "content": better}}
                if action == "logprobs":
                    lp = {"A": -0.105, "B": -2.303} if better == "A" else {"A": -2.303, "B": -0.105}
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": better,
                                "logprob": lp[better],
                                "top_logprobs": [{"token": k, "logprob": v} for k, v in lp.items()],
                            }
                        ]
                    }
                data = json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture()
def server():
    s = ChatServer()
    yield s
    s.close()


def _judge(server, **kw):
    return OpenAIJudge(
        base_url=server.url,
        model="judge-model",
        api_key_env="TEST_JUDGE_KEY",
        **{"timeout_s": 0.5, "max_retries": 2, "backoff_s": 0.01, "concurrency": 2, **kw},
    )


def test_openai_judge_reads_letters_and_logprobs(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    triples = [("q", "GOOD answer", "bad answer"), ("q", "bad answer", "GOOD answer")]
    assert _judge(server).prob_first(triples).tolist() == [1.0, 0.0]
    server.script = ["logprobs", "logprobs"]
    probs = _judge(server, concurrency=1).prob_first(triples)
    assert probs[0] == pytest.approx(0.9, abs=1e-3) and probs[1] == pytest.approx(0.1, abs=1e-3)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "judge-model"
    assert request["auth"] == "Bearer sk-test-123"


def test_openai_judge_retries_server_errors_and_timeouts(server):
    server.script = ["500", "slow"]  # first try: HTTP 500; second: longer than the 0.5 s timeout; third: ok
    assert _judge(server, concurrency=1).prob_first([("q", "GOOD", "bad")]).tolist() == [1.0]
    assert len(server.requests) == 3


def test_openai_judge_gives_up_clearly(server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-999")
    server.script = ["500", "500", "500"]
    with pytest.raises(JudgeError, match="failed after 3 tries") as err:
        _judge(server, concurrency=1).prob_first([("q", "GOOD", "bad")])
    assert "sk-secret-999" not in str(err.value)
    server.script = ["400"]
    with pytest.raises(JudgeError, match="HTTP 400"):
        _judge(server, concurrency=1).prob_first([("q", "GOOD", "bad")])
    assert len(server.requests) == 4  # a 400 is not retried


def test_instruction_sets_offline(tmp_path):
    from calibration_lightning.errors import DataError
    from calibration_lightning.winrate import instructions

    assert len(instructions.builtin()) == 24 and all(ref is None for _, ref in instructions.builtin())
    rows = [
        {"instruction": "Name a fruit.", "output": "Apple.", "generator": "gpt4", "dataset": "x"},
        {"instruction": "Say hi.", "output": "Hi!", "generator": "gpt4", "dataset": "x"},
    ]
    (tmp_path / "alpaca_eval.json").write_text(json.dumps(rows))
    assert instructions.alpaca_eval(data_dir=str(tmp_path)) == [("Name a fruit.", "Apple."), ("Say hi.", "Hi!")]
    assert len(instructions.alpaca_eval(data_dir=str(tmp_path), limit=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\n{"reference": "no instruction"}\n')
    with pytest.raises(DataError, match="record 2: field 'instruction'"):
        instructions.jsonl(str(bad))
