"""Running as a CNI plugin, and running another one (the IPAM plugin).

:func:`serve` is the body of both console scripts: read the environment and stdin,
call the command's handler, print its result or the spec's error object, exit 0 or 1.
:func:`exec_plugin` runs a delegated plugin the way a runtime does: the binary named
by ``type`` from ``CNI_PATH``, the same environment (``CNI_COMMAND`` and all), the
network configuration on stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from sclp.cni.spec import (
    DECODING_FAILURE,
    IO_FAILURE,
    IPAM_FAILURE,
    CniError,
    Environment,
    decode_config,
    version_result,
)

Handler = Callable[[Environment, dict[str, Any]], dict[str, Any] | None]

DELEGATE_TIMEOUT = 30.0


USAGE = """{name}: a CNI plugin; container runtimes run it (CNI_COMMAND=ADD|DEL|CHECK|VERSION
and the other CNI_* variables in the environment, the network configuration on stdin).
Configuration for podman, containerd and Kubernetes: docs/containers.md."""


def serve(handlers: Mapping[str, Handler], name: str) -> int:
    """Serve one invocation; the exit status."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(USAGE.format(name=name))
        return 0
    if "CNI_COMMAND" not in os.environ and sys.stdin.isatty():
        print(USAGE.format(name=name), file=sys.stderr)
        return 1
    version = "1.0.0"
    try:
        env = Environment.parse(os.environ)
        data = sys.stdin.buffer.read()
        if env.command == "VERSION":
            conf = None
            if data.strip():
                try:
                    conf = decode_config(data)
                except CniError:
                    conf = None
            _emit(version_result(conf))
            return 0
        conf = decode_config(data)
        if isinstance(conf.get("cniVersion"), str):
            version = conf["cniVersion"]
        result = handlers[env.command](env, conf)
    except CniError as exc:
        _emit(exc.to_json(version))
        return 1
    except Exception as exc:  # anything else is still the spec's error, never a traceback
        _emit(CniError(IO_FAILURE, f"{name}: {type(exc).__name__}: {exc}").to_json(version))
        return 1
    if result is not None:
        _emit(result)
    return 0


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def find_plugin(kind: str, path: tuple[str, ...]) -> str:
    for directory in path:
        candidate = os.path.join(directory, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        IPAM_FAILURE,
        f"IPAM plugin {kind!r} not found in CNI_PATH ({':'.join(path) or 'empty'}); "
        "install it there (host-local: Debian's containernetworking-plugins) "
        "or fix the runtime's plugin directories",
    )


def exec_plugin(
    kind: str, env: Environment, conf: Mapping[str, Any], command: str | None = None
) -> dict[str, Any] | None:
    """Run plugin ``kind`` for ``command`` (default: ours); its decoded result (None
    if it printed nothing).  Its error object becomes a :class:`CniError` with its code."""
    binary = find_plugin(kind, env.path)
    child_env = dict(os.environ)
    child_env["CNI_COMMAND"] = command or env.command
    try:
        proc = subprocess.run(
            [binary],
            input=json.dumps(conf).encode(),
            env=child_env,
            capture_output=True,
            timeout=DELEGATE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(IPAM_FAILURE, f"IPAM plugin {kind}: {exc}") from None
    out = proc.stdout.strip()
    answer: Any = None
    if out:
        try:
            answer = json.loads(out)
        except ValueError:
            raise CniError(
                DECODING_FAILURE, f"IPAM plugin {kind} printed no JSON: {out[:200]!r}"
            ) from None
    if proc.returncode != 0:
        if isinstance(answer, dict) and isinstance(answer.get("code"), int):
            msg = answer.get("msg", "")
            raise CniError(
                answer["code"], f"IPAM plugin {kind}: {msg}", str(answer.get("details", ""))
            )
        err = proc.stderr.decode(errors="replace").strip()[:300]
        raise CniError(IPAM_FAILURE, f"IPAM plugin {kind} failed ({proc.returncode}): {err}")
    return answer if isinstance(answer, dict) else None
