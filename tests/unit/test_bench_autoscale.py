"""bench.serve_autoscale without Ray: the two policies differ in the autoscaling policy alone, and the report says how
much sooner the token policy ran a second replica, or that a policy never did."""

from __future__ import annotations

import copy

import pytest

from bench.serve_autoscale import parser
from bench.serving.autoscale_report import report, speedup_line
from bench.serving.autoscale_runs import REQUESTS, TOKENS, burst_spec, policy_config
from bench.serving.harness import Bench
from bigmodel.builders.serve_app import app_args, serve_deploy_config


def bench(*argv: str) -> Bench:
    return Bench(parser().parse_args(list(argv)), "/models/gpt", "", 0.0)


def test_the_default_burst_is_small_requests_that_do_not_add_up_and_tokens_that_do() -> None:
    args = bench().args
    assert args.policies == (TOKENS, REQUESTS)
    assert args.concurrency < args.max_replicas * args.target_ongoing_requests, "request counting would scale at once"
    assert args.concurrency * args.max_tokens >= 2 * args.target_pending_tokens, "the token policy would not scale"
    assert args.settle > 30, "Serve's 30 s look-back would still hold the warm-up request"


@pytest.mark.parametrize("policies", ["tokens,tokens", "tokens,bytes", ""])
def test_a_policy_list_names_each_known_policy_at_most_once(policies: str) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--policies", policies])


def test_the_two_policies_deploy_the_same_config_but_for_the_autoscaling_policy() -> None:
    spec = burst_spec(bench("--target-pending-tokens", "700", "--target-ongoing-requests", "5"))
    config = serve_deploy_config("bench", spec, app_args("bench", spec, "/models/gpt", "v1"))
    original = copy.deepcopy(config)
    assert policy_config(config, TOKENS) == original
    requests = policy_config(config, REQUESTS)
    assert config == original, "the operator's config was changed in place"
    autoscaling = original["applications"][0]["deployments"][0]["autoscaling_config"]
    assert autoscaling["policy"]["policy_kwargs"] == {"target_pending_tokens": 700}
    assert autoscaling["target_ongoing_requests"] == 5
    del autoscaling["policy"]
    assert requests == original


def result(running_s: float | None, **more: object) -> dict[str, object]:
    point = {"requests": 12, "errors": 0, "ttft_p50_ms": 41.0, "ttft_p99_ms": 95.0}
    return {"target_s": running_s and running_s - 6, "running_s": running_s, "most": 3, "end": 3, "burst_s": 95.0,
            "point": point, **more}  # fmt: skip


def test_the_report_gives_each_policy_a_line_and_the_ratio_of_their_seconds_to_a_second_replica(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report("settings", {TOKENS: result(18.0), REQUESTS: result(45.0, most=2, end=2)})
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in ([TOKENS], [REQUESTS])]
    assert rows == [
        [TOKENS, "12.0", "18.0", "3", "3", "12", "0", "41", "95"],
        [REQUESTS, "39.0", "45.0", "2", "2", "12", "0", "41", "95"],
    ]
    assert "seconds to a 2nd running replica, requests / tokens: 2.5x" in out


def test_a_policy_that_never_scaled_is_said_so_with_a_bound() -> None:
    never = result(None, most=1, end=1)
    assert speedup_line({TOKENS: result(19.0), REQUESTS: never}).endswith(
        "more than 5.0x (Serve's default ran no 2nd replica within its 95 s burst)"
    )
    assert "the token policy ran no 2nd replica" in speedup_line({TOKENS: never, REQUESTS: result(40.0)})
    assert speedup_line({TOKENS: result(19.0)}).endswith("not measured (both policies must run)")


def test_an_interrupted_run_reports_what_it_measured(capsys: pytest.CaptureFixture[str]) -> None:
    report("settings", {TOKENS: result(18.0, point=None)})
    out = capsys.readouterr().out
    assert [line.split() for line in out.splitlines() if line.startswith(TOKENS)][0][-4:] == ["n/a"] * 4
