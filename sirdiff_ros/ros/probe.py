"""Drive and observe a restore node over DDS: used by the demo, the benchmark and the tests.

:class:`NodeProcess` runs ``sirdiff-restore`` (or any command ending in its
``main()``) as a separate process with parameters, and stops it with SIGINT,
timing the exit. :class:`Probe` is an rclpy participant in its own Context
and thread that publishes inputs (image, camera_info, pose) and records every
output (images, camera_info, KeyframeSet, RestoreStatus, /diagnostics) with
its arrival time. Nothing here changes global rclpy state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from .convert import stamp_to_ns

__all__ = ["LifecycleClient", "NodeProcess", "Probe", "Received"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    """The restore node in its own process; ``params`` become ``-p name:=value``."""

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        params_file: str | Path | None = None,
        command: Sequence[str] | None = None,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        cmd = list(command or [sys.executable, "-m", "sirdiff_ros.ros.restore_node"])
        cmd.append("--ros-args")
        if params_file is not None:
            cmd += ["--params-file", str(params_file)]
        for k, v in (params or {}).items():
            cmd += ["-p", f"{k}:={_ros_value(v)}"]
        self.cmd = cmd
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONPATH", str(REPO_ROOT))
        full_env.update(env or {})
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "wb") if self.log_path else None
        self.proc = subprocess.Popen(
            cmd, stdout=self._log or subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env
        )

    def output(self) -> str:
        """Everything the process wrote so far (when logging to a file) or after exit."""
        if self.log_path is not None:
            return self.log_path.read_bytes().decode(errors="replace")
        if self.proc.poll() is None:
            raise RuntimeError("output of a running node without a log file is not available")
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the node process (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def interrupt(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGINT; returns (exit code, seconds until exit). Kills it if it does not exit."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return rc, time.monotonic() - t0

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.alive():
            self.interrupt(5.0)
        if self._log is not None:
            self._log.close()


def _ros_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v else "''"
    return repr(v)


@dataclass
class Received:
    msg: Any
    t: float  # time.monotonic() at arrival

    @property
    def stamp_ns(self) -> int:
        return stamp_to_ns(self.msg.header.stamp)


@dataclass
class _Topic:
    items: list[Received] = field(default_factory=list)


class Probe:
    """Publisher of inputs and recorder of outputs, in its own Context and thread.

    ``outputs`` maps a topic to its message class; ``inputs`` likewise. Use as a
    context manager; :meth:`wait_for` polls a condition on the recorded data.
    """

    def __init__(
        self,
        inputs: dict[str, type],
        outputs: dict[str, type],
        reliable: bool = True,
        depth: int = 200,
        name: str = "sirdiff_probe",
    ) -> None:
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = Node(name, context=self.context, start_parameter_services=False)
        rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=rel)
        self.pubs: dict[str, Any] = {t: self.node.create_publisher(c, t, qos) for t, c in inputs.items()}
        self.received: dict[str, list[Received]] = {t: [] for t in outputs}
        self._lock = threading.Lock()
        for t, c in outputs.items():
            self.node.create_subscription(c, t, self._make_cb(t), qos)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, name=name, daemon=False)
        self._thread.start()

    def _make_cb(self, topic: str) -> Callable[[Any], None]:
        def cb(msg: Any) -> None:
            with self._lock:
                self.received[topic].append(Received(msg, time.monotonic()))

        return cb

    def get(self, topic: str) -> list[Received]:
        with self._lock:
            return list(self.received[topic])

    def publish(self, topic: str, msg: Any) -> None:
        self.pubs[topic].publish(msg)

    def wait_matched(self, timeout_s: float = 20.0, inputs: Sequence[str] | None = None) -> bool:
        """Until every input (or those named) has a subscriber and every output a publisher."""
        deadline = time.monotonic() + timeout_s
        pubs = [self.pubs[t] for t in inputs] if inputs is not None else list(self.pubs.values())
        while time.monotonic() < deadline:
            pubs_ok = all(p.get_subscription_count() > 0 for p in pubs)
            subs_ok = all(self.node.count_publishers(t) > 0 for t in self.received)
            if pubs_ok and subs_ok:
                time.sleep(0.2)  # let the reverse direction match too
                return True
            time.sleep(0.05)
        return False

    def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join(5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LifecycleClient:
    """A node's lifecycle services, called from a :class:`Probe` (what ``ros2 lifecycle get/set`` does)."""

    def __init__(self, probe: Probe, node: str, timeout_s: float = 60.0) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self.probe = probe
        self.timeout_s = timeout_s
        self._change: Any = probe.node.create_client(ChangeState, f"{node}/change_state")
        self._get: Any = probe.node.create_client(GetState, f"{node}/get_state")

    def _call(self, client: Any, request: Any, resend_s: float | None = None) -> Any:
        """The service's answer; an idempotent request (``resend_s`` given) is sent again after each
        ``resend_s`` without one: a server that has not discovered the client's response reader yet
        drops the response (seen right after a node started on a loaded host: no answer in 60 s)."""
        if not client.wait_for_service(self.timeout_s):
            raise TimeoutError(f"no service {client.srv_name}")
        deadline = time.monotonic() + self.timeout_s
        while True:
            future = client.call_async(request)
            left = deadline - time.monotonic()
            if self.probe.wait_for(future.done, left if resend_s is None else min(resend_s, left)):
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no answer from {client.srv_name}")

    def state(self) -> str:
        """The current state's label: unconfigured, inactive, active, finalized."""
        from lifecycle_msgs.srv import GetState

        return str(self._call(self._get, GetState.Request(), resend_s=2.0).current_state.label)

    def set(self, transition_id: int) -> bool:
        """Request a transition (``lifecycle_msgs/Transition.TRANSITION_*``); True if it succeeded."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        return bool(self._call(self._change, ChangeState.Request(transition=Transition(id=transition_id))).success)


def target_rich_frames(n: int, width: int, height: int, seed: int = 3, blur_every: int = 3, blur_px: int = 15) -> list[Any]:
    """``n`` frames of one synthetic camera path where every ``blur_every``-th is strongly blurred.

    The others carry their sharp ground truth, so the blur gate reliably picks
    the blurred ones as restoration targets: a predictable load for the node
    (tests, benchmark). ``extras['blurred']`` marks them; ``extras['sharp']``
    is every frame's ground truth.
    """
    import dataclasses

    import cv2

    from ..data.synth import generate_sequence

    frames = []
    for i, f in enumerate(generate_sequence(seed, n, width, height)):
        blurred = blur_every > 0 and i % blur_every == blur_every - 1
        sharp = f.extras["sharp"]
        image = cv2.blur(sharp, (blur_px, 1)) if blurred else sharp
        frames.append(dataclasses.replace(f, image=image, extras={"blurred": blurred, "sharp": sharp}))
    return frames
