"""The test-only kubelet runs pods as local processes and reports their status like a kubelet."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.support.emulator import Emulator, KubeClient, wait_for
from tests.support.kubelet import LocalKubelet

WAIT_S = 10.0

# A readiness endpoint plus a view of the environment the pod got, on the port given as `--port=N`.
SERVER = """
import http.server, json, os, sys
port = int(sys.argv[1].split("=")[1])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"argv": sys.argv, "env": dict(os.environ)}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture()
def kubelet(emulator: Emulator, tmp_path: Path) -> Iterator[LocalKubelet]:
    with LocalKubelet(emulator.url, tmp_path / "pods", termination_grace_s=2.0) as running:
        yield running


def pod(name: str, command: list[str], args: list[str] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "python", "command": command, "args": args or [],
                                 **container}]},
    }


def server_pod(name: str, port: int, **container: Any) -> dict[str, Any]:
    return pod(name, [sys.executable, "-c", SERVER], [f"--port={port}"],
               ports=[{"containerPort": port, "name": "http"}],
               readinessProbe={"httpGet": {"path": "/ready", "port": "http"}}, **container)


async def phase_of(kube: KubeClient, name: str, phase: str) -> dict[str, Any] | None:
    body = await kube.get("v1", "pods", name)
    return body if body and body.get("status", {}).get("phase") == phase else None


async def ready(kube: KubeClient, name: str) -> dict[str, Any] | None:
    body = await kube.get("v1", "pods", name)
    conditions = (body or {}).get("status", {}).get("conditions", [])
    return body if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return dict(await response.json(content_type=None))


async def test_a_serving_pod_becomes_running_and_ready(kube: KubeClient, kubelet: LocalKubelet) -> None:
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HEAD", "value": "head-svc.default.svc.cluster.local"},
        {"name": "GREETING", "value": "hello $(POD_NAME) $$(POD_NAME) $(UNKNOWN)"},
    ]
    await kube.create("v1", "pods", server_pod("web", 18080, env=env))
    body = await wait_for(lambda: ready(kube, "web"), WAIT_S, f"pod web never became Ready:\n{kubelet.log_tail('web')}")
    status = body["status"]
    assert status["phase"] == "Running" and status["podIP"] == "127.0.0.1" and status["hostIP"] == "127.0.0.1"
    assert status["containerStatuses"][0]["ready"] is True
    assert kubelet.pid_of("web") is not None

    seen = await get_json(f"http://127.0.0.1:{kubelet.host_port('web', 18080)}/")
    assert seen["env"]["POD_NAME"] == "web" and seen["env"]["POD_IP"] == "127.0.0.1"
    assert seen["env"]["HEAD"] == "127.0.0.1"
    assert seen["env"]["GREETING"] == "hello web $(POD_NAME) $(UNKNOWN)"


async def test_a_failing_command_fails_the_pod_with_its_exit_code(kube: KubeClient, kubelet: LocalKubelet) -> None:
    await kube.create("v1", "pods", pod("crash", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"]))
    body = await wait_for(lambda: phase_of(kube, "crash", "Failed"), WAIT_S, "pod crash never failed")
    assert body["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "bye" in kubelet.log_tail("crash")

    await kube.create("v1", "pods", pod("done", [sys.executable, "-c", "pass"]))
    await wait_for(lambda: phase_of(kube, "done", "Succeeded"), WAIT_S, "pod done never succeeded")


async def test_a_killed_process_reports_the_signal(kube: KubeClient, kubelet: LocalKubelet) -> None:
    await kube.create("v1", "pods", pod("victim", [sys.executable, "-c", "import time; time.sleep(60)"]))
    await wait_for(lambda: kubelet.pid_of("victim"), WAIT_S, "pod victim never started")
    kubelet.kill("victim")
    body = await wait_for(lambda: phase_of(kube, "victim", "Failed"), WAIT_S, "the killed pod never failed")
    assert body["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


async def test_deleting_a_pod_kills_its_processes(kube: KubeClient, kubelet: LocalKubelet) -> None:
    # The child ignores SIGTERM: it only goes away because the kubelet kills the whole process group once the main
    # process is gone, as a container runtime tears a container down.
    script = ("import signal, subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
              "time.sleep(60)\n")
    await kube.create("v1", "pods", pod("sleeper", [sys.executable, "-c", script]))
    pid = await wait_for(lambda: kubelet.pid_of("sleeper"), WAIT_S, "pod sleeper never started")
    children = await wait_for(lambda: psutil.Process(pid).children(), WAIT_S, "the pod's child never started")
    processes = [psutil.Process(pid), *children]  # before the delete: the main process may be gone right after it

    await kube.delete("v1", "pods", "sleeper")
    await wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes),
                   WAIT_S, "deleting the pod did not kill its processes")
    assert kubelet.pid_of("sleeper") is None


async def test_pods_with_the_same_port_both_become_ready(kube: KubeClient, kubelet: LocalKubelet) -> None:
    await kube.create("v1", "pods", server_pod("twin-a", 18090))
    await kube.create("v1", "pods", server_pod("twin-b", 18090))
    for name in ("twin-a", "twin-b"):
        await wait_for(lambda: ready(kube, name), WAIT_S, f"pod {name} never became Ready:\n{kubelet.log_tail(name)}")

    ports = {kubelet.host_port("twin-a", 18090), kubelet.host_port("twin-b", 18090)}
    assert len(ports) == 2 and 18090 in ports
    for name in ("twin-a", "twin-b"):
        seen = await get_json(f"http://127.0.0.1:{kubelet.host_port(name, 18090)}/")
        assert seen["argv"][1] == f"--port={kubelet.host_port(name, 18090)}"


async def test_a_busy_port_is_rewritten_in_env_values_too(kube: KubeClient, kubelet: LocalKubelet) -> None:
    """How two worker pods' Serve proxies on one host bind ports of their own: the variable that names the declared
    port (RAY_SERVE_WORKER_PROXY_HTTP_PORT) follows the rewrite."""
    for name in ("proxy-a", "proxy-b"):
        env = [{"name": "PROXY_PORT", "value": "18095"}]
        await kube.create("v1", "pods", server_pod(name, 18095, env=env))
    for name in ("proxy-a", "proxy-b"):
        await wait_for(lambda: ready(kube, name), WAIT_S, f"pod {name} never became Ready")
        seen = await get_json(f"http://127.0.0.1:{kubelet.host_port(name, 18095)}/")
        assert seen["env"]["PROXY_PORT"] == str(kubelet.host_port(name, 18095))
    assert kubelet.host_port("proxy-a", 18095) != kubelet.host_port("proxy-b", 18095)


async def test_a_pod_made_again_under_its_name_gets_its_host_ports_back(kube: KubeClient,
                                                                       kubelet: LocalKubelet) -> None:
    """As a Service's ClusterIP stays for a re-created pod: what resolved it once (a Ray worker, its head) still
    reaches it."""
    await kube.create("v1", "pods", server_pod("holder", 18130))
    await wait_for(lambda: ready(kube, "holder"), WAIT_S, "pod holder never became Ready")
    await kube.create("v1", "pods", server_pod("again", 18130))
    await wait_for(lambda: ready(kube, "again"), WAIT_S, "pod again never became Ready")
    first = kubelet.host_port("again", 18130)
    assert first != 18130, "the holder took the declared port"
    await kube.delete("v1", "pods", "again", grace_period_seconds=0)
    await wait_for(lambda: _gone(kube, "again"), WAIT_S, "pod again was not deleted")
    await kube.create("v1", "pods", server_pod("again", 18130))
    await wait_for(lambda: ready(kube, "again"), WAIT_S, "the re-created pod never became Ready")
    assert kubelet.host_port("again", 18130) == first


async def test_of_two_pods_declaring_a_port_the_first_made_keeps_it(kube: KubeClient, kubelet: LocalKubelet) -> None:
    """Even when it starts last: a Ray head, made before its workers, keeps the port its Serve config binds."""
    waiting = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    await kube.create("v1", "pods", server_pod("first-made", 18140, env=waiting))
    await kube.create("v1", "pods", server_pod("second-made", 18140))
    await wait_for(lambda: ready(kube, "second-made"), WAIT_S, "pod second-made never became Ready")
    assert kubelet.host_port("second-made", 18140) != 18140
    await kube.create("v1", "secrets", {"metadata": {"name": "late"}, "stringData": {"token": "t"}})
    await wait_for(lambda: ready(kube, "first-made"), WAIT_S, "pod first-made never became Ready")
    assert kubelet.host_port("first-made", 18140) == 18140


async def _gone(kube: KubeClient, name: str) -> bool:
    return await kube.get("v1", "pods", name) is None


async def test_service_ports_follow_rewritten_pod_ports(kube: KubeClient, kubelet: LocalKubelet) -> None:
    await kube.create("v1", "pods", server_pod("first", 18100))
    await kube.create("v1", "pods", server_pod("second", 18100))
    for name in ("first", "second"):
        await wait_for(lambda: ready(kube, name), WAIT_S, f"pod {name} never became Ready")
    await kube.create("v1", "services", {"metadata": {"name": "second-svc"}, "spec": {
        "selector": {"app": "second"}, "ports": [{"port": 80, "targetPort": "http"}]}})

    client_env = [{"name": "TARGET", "value": "http://second-svc.default.svc:80/"}]
    await kube.create("v1", "pods", server_pod("client", 18110, env=client_env))
    await wait_for(lambda: ready(kube, "client"), WAIT_S, "pod client never became Ready")
    seen = await get_json(f"http://127.0.0.1:{kubelet.host_port('client', 18110)}/")
    assert seen["env"]["TARGET"] == f"http://127.0.0.1:{kubelet.host_port('second', 18100)}/"


async def test_each_pod_gets_its_own_empty_dir(kube: KubeClient, kubelet: LocalKubelet) -> None:
    # Two Ray nodes on one host that share a session directory race for its socket names; pods never share one.
    for name, port in (("node-a", 18120), ("node-b", 18120)):
        body = server_pod(name, port, volumeMounts=[{"name": "scratch", "mountPath": "/tmp/ray"}],
                          env=[{"name": "RAY_LOGS", "value": "/tmp/ray/session_latest/logs"}])
        body["spec"]["containers"][0]["args"] += ["--temp-dir=/tmp/ray", "--spill=/tmp/rayx"]
        body["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
        await kube.create("v1", "pods", body)
    seen = {}
    for name in ("node-a", "node-b"):
        await wait_for(lambda: ready(kube, name), WAIT_S, f"pod {name} never became Ready:\n{kubelet.log_tail(name)}")
        seen[name] = await get_json(f"http://127.0.0.1:{kubelet.host_port(name, 18120)}/")

    dirs = {name: Path(got["argv"][2].removeprefix("--temp-dir=")) for name, got in seen.items()}
    assert dirs["node-a"] != dirs["node-b"], "both pods got the same emptyDir"
    for name, got in seen.items():
        assert dirs[name].is_dir() and not any(dirs[name].iterdir()), f"{name}'s emptyDir is not a fresh directory"
        assert got["env"]["RAY_LOGS"] == f"{dirs[name]}/session_latest/logs"
        assert got["argv"][3] == "--spill=/tmp/rayx", "a path that only starts with the mount path was rewritten"


async def test_a_deleted_pod_is_terminating_until_its_processes_stopped(kube: KubeClient,
                                                                        kubelet: LocalKubelet) -> None:
    # The process takes a second to stop on SIGTERM, so that the pod is seen Terminating meanwhile.
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))\n"
              "time.sleep(60)\n")
    await kube.create("v1", "pods", pod("slow", [sys.executable, "-c", script]))
    running = await wait_for(lambda: phase_of(kube, "slow", "Running"), WAIT_S, "pod slow never ran")
    assert running["spec"]["nodeName"] == "localhost"  # the kubelet bound it to its node
    pid = await wait_for(lambda: kubelet.pid_of("slow"), WAIT_S, "pod slow has no process")

    terminating = await kube.delete("v1", "pods", "slow")
    assert terminating is not None and terminating["metadata"]["deletionTimestamp"]
    assert psutil.pid_exists(pid) and await kube.get("v1", "pods", "slow") is not None
    await wait_for(lambda: _absent(kube, "slow"), WAIT_S, "the kubelet never finished the pod's deletion")
    assert kubelet.pid_of("slow") is None


async def test_a_lost_nodes_pods_stay_terminating(emulator: Emulator, kube: KubeClient,
                                                  kubelet: LocalKubelet) -> None:
    await kube.create("v1", "pods", pod("stranded", [sys.executable, "-c", "import time; time.sleep(60)"]))
    await wait_for(lambda: phase_of(kube, "stranded", "Running"), WAIT_S, "pod stranded never ran")
    emulator.lose_node("localhost")

    await kube.delete("v1", "pods", "stranded")
    await wait_for(lambda: kubelet.pid_of("stranded") is None, WAIT_S, "the kubelet did not stop the pod")
    await asyncio.sleep(1.0)  # time for the kubelet's report and its delete, which the server does not hear
    body = await kube.get("v1", "pods", "stranded")
    assert body is not None and body["metadata"]["deletionTimestamp"] and body["status"]["phase"] == "Running"
    await kube.create("v1", "pods", pod("unschedulable", [sys.executable, "-c", "pass"]))
    await asyncio.sleep(1.0)
    assert "nodeName" not in (await kube.get("v1", "pods", "unschedulable") or {})["spec"]  # nowhere to run it

    emulator.finish_termination("default", "stranded")
    assert await kube.get("v1", "pods", "stranded") is None


async def test_a_pod_left_terminating_before_the_kubelet_started_is_finished(emulator: Emulator, kube: KubeClient,
                                                                            tmp_path: Path) -> None:
    body = pod("leftover", [sys.executable, "-c", "pass"])
    body["spec"]["nodeName"] = "localhost"
    await kube.create("v1", "pods", body)
    await kube.delete("v1", "pods", "leftover")
    with LocalKubelet(emulator.url, tmp_path / "pods"):
        await wait_for(lambda: _absent(kube, "leftover"), WAIT_S, "the kubelet did not finish a pod it never ran")


async def _absent(kube: KubeClient, name: str) -> bool:
    return await kube.get("v1", "pods", name) is None


async def test_env_from_secrets_and_config_maps(kube: KubeClient, kubelet: LocalKubelet) -> None:
    await kube.create("v1", "secrets", {"metadata": {"name": "hf"}, "stringData": {"token": "s3cret"}})
    await kube.create("v1", "secrets", {"metadata": {"name": "db"},
                                        "data": {"USER": "YWRh", "PASSWORD": "cHc=", "not a name": "eA=="}})
    await kube.create("v1", "configmaps", {"metadata": {"name": "tuning"}, "data": {"threads": "4", "url": "u"}})
    env = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "THREADS", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "threads"}}},
        {"name": "DB_USER", "value": "overridden $(DB_PASSWORD)"},
        {"name": "ABSENT", "valueFrom": {"secretKeyRef": {"name": "nowhere", "key": "k", "optional": True}}},
    ]
    env_from = [{"secretRef": {"name": "db"}, "prefix": "DB_"}, {"configMapRef": {"name": "tuning"}},
                {"configMapRef": {"name": "nowhere", "optional": True}}]
    await kube.create("v1", "pods", server_pod("refs", 18100, env=env, envFrom=env_from))
    await wait_for(lambda: ready(kube, "refs"), WAIT_S, f"pod refs never became Ready:\n{kubelet.log_tail('refs')}")

    seen = (await get_json(f"http://127.0.0.1:{kubelet.host_port('refs', 18100)}/"))["env"]
    assert seen["HF_TOKEN"] == "s3cret" and seen["THREADS"] == "4"
    assert seen["DB_PASSWORD"] == "pw" and seen["threads"] == "4" and seen["url"] == "u"
    assert seen["DB_USER"] == "overridden pw", "env entries override envFrom and may refer to its variables"
    assert "ABSENT" not in seen and "DB_not a name" not in seen


async def test_a_missing_secret_keeps_the_pod_waiting_until_it_exists(kube: KubeClient, kubelet: LocalKubelet) -> None:
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    await kube.create("v1", "pods", server_pod("patient", 18110, env=env))

    async def waiting(message: str) -> dict[str, Any] | None:
        body = await phase_of(kube, "patient", "Pending")
        state = ((body or {}).get("status", {}).get("containerStatuses") or [{}])[0].get("state", {})
        reason = state.get("waiting", {})
        return body if reason.get("reason") == "CreateContainerConfigError" and reason.get("message") == message else None

    await wait_for(lambda: waiting('secret "late" not found'), WAIT_S, "the pod did not wait for its Secret")
    await kube.create("v1", "secrets", {"metadata": {"name": "late"}, "data": {"other": "eA=="}})
    await wait_for(lambda: waiting("couldn't find key token in Secret default/late"), WAIT_S,
                   "the pod did not wait for the Secret's key")
    assert kubelet.pid_of("patient") is None

    await kube.patch("v1", "secrets", "late", {"stringData": {"token": "finally"}})
    await wait_for(lambda: ready(kube, "patient"), WAIT_S, "the pod did not start once its Secret was complete")
    seen = (await get_json(f"http://127.0.0.1:{kubelet.host_port('patient', 18110)}/"))["env"]
    assert seen["HF_TOKEN"] == "finally"


async def test_a_pod_deleted_while_it_waits_for_a_secret_goes(kube: KubeClient, kubelet: LocalKubelet) -> None:
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "never", "key": "token"}}}]
    await kube.create("v1", "pods", pod("abandoned", [sys.executable, "-c", "pass"], env=env))
    await wait_for(lambda: phase_of(kube, "abandoned", "Pending"), WAIT_S, "the pod was never reported Pending")
    await kube.delete("v1", "pods", "abandoned")
    await wait_for(lambda: _gone(kube, "abandoned"), WAIT_S, "the waiting pod's deletion was never finished")


async def _gone(kube: KubeClient, name: str) -> bool:
    return await kube.get("v1", "pods", name) is None


# A main process that, on SIGTERM, writes which of its children saw a signal, then exits; its child ignores nothing.
SIGTERM_TO_PID_1 = """
import pathlib, signal, subprocess, sys, time
out = pathlib.Path(sys.argv[1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
def on_term(*_):
    time.sleep(0.3)
    out.write_text("child alive" if child.poll() is None else "child signalled")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(out.parent / (out.name + ".child")).write_text(str(child.pid))
time.sleep(600)
"""


async def test_a_deleted_pod_gets_sigterm_on_its_main_process_only_and_the_rest_dies_with_it(
    kube: KubeClient, kubelet: LocalKubelet, tmp_path: Path
) -> None:
    """As a container runtime signals PID 1: the main process decides what its children hear (`ray start` drains its
    node first); once it has exited, whatever it left is killed, and only then is the pod gone."""
    out = tmp_path / "seen"
    await kube.create("v1", "pods", pod("pid1", [sys.executable, "-c", SIGTERM_TO_PID_1, str(out)]))
    child_file = tmp_path / "seen.child"
    await wait_for(child_file.exists, WAIT_S, "the pod's main process did not start its child")
    child = int(child_file.read_text())
    await kube.delete("v1", "pods", "pid1")
    await wait_for(lambda: _no_pod(kube, "pid1"), WAIT_S, "the deleted pod was not removed")
    assert out.read_text() == "child alive", "the SIGTERM reached the main process's child too"
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, (
        "the pod is gone while a process of it still runs"
    )


async def _no_pod(kube: KubeClient, name: str) -> bool:
    return await kube.get("v1", "pods", name) is None


async def test_a_cordoned_node_leaves_new_pods_pending_unschedulable(kube: KubeClient, kubelet: LocalKubelet) -> None:
    kubelet.cordon()
    await kube.create("v1", "pods", server_pod("waiting", 18931))

    async def unschedulable() -> dict[str, Any] | None:
        body = await kube.get("v1", "pods", "waiting")
        conditions = (body or {}).get("status", {}).get("conditions", [])
        return body if any(c.get("reason") == "Unschedulable" for c in conditions) else None

    await wait_for(unschedulable, WAIT_S, "a pod on a cordoned node was not reported Unschedulable")
    assert kubelet.pid_of("waiting") is None, "a pod ran on a cordoned node"
    kubelet.uncordon()
    await wait_for(lambda: ready(kube, "waiting"), WAIT_S, "the pod did not start once the node was uncordoned")
