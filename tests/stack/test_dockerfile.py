"""Dockerfile: base image, user, health check, volume, ports, and a warm-up that really runs."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from pensu.settings import Settings, known_variables, load_settings
from tests.stack.stack_files import (
    DOCKERFILE,
    REPO,
    Instruction,
    dockerignore_patterns,
    dockerignored,
    parse_dockerfile,
    parse_env_args,
)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(instructions: list[Instruction]) -> list[Instruction]:
    """Instructions of the last build stage (the image that runs)."""
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def final_env(final: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in only(final, "ENV"):
        env.update(parse_env_args(instruction.args))
    return env


def warmup_snippets(final: list[Instruction]) -> list[str]:
    return [body for i in only(final, "RUN") for body in i.heredocs if "pensu.htm" in body]


def test_every_stage_uses_python_311_slim(instructions: list[Instruction]) -> None:
    stages = only(instructions, "FROM")
    assert stages
    for stage in stages:
        image = stage.args.split()[0]
        assert PurePosixPath(image).match("python:3.11-slim*"), image


def test_runs_as_a_non_root_user(final: list[Instruction]) -> None:
    users = only(final, "USER")
    assert users, "final stage has no USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    # The warm-up must run as that user so the numba cache files belong to it.
    user_index = final.index(users[-1])
    runs_after = [i for i in final[user_index:] if i.keyword == "RUN" and i.heredocs]
    assert runs_after and warmup_snippets(runs_after)


def test_numba_cache_dir_is_set_and_owned_by_the_user(final: list[Instruction]) -> None:
    env = final_env(final)
    cache = env.get("NUMBA_CACHE_DIR")
    assert cache and cache.startswith("/")
    user = only(final, "USER")[-1].args.split(":")[0]
    created = [i for i in only(final, "RUN") if cache in i.args]
    assert any(f"-o {user}" in i.args or f"chown {user}" in i.args for i in created), \
        "the cache dir must be created owned by the runtime user"


def test_installs_the_package_with_pip(instructions: list[Instruction]) -> None:
    assert any(re.search(r"pip install\s+\.(\s|$)", i.args) for i in only(instructions, "RUN"))


def test_copied_sources_exist_and_are_not_dockerignored(instructions: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    copies = [i for i in only(instructions, "COPY") if "--from=" not in i.args]
    assert copies
    for copy in copies:
        sources = shlex.split(copy.args)[:-1]
        for source in sources:
            assert (REPO / source).exists(), source
            assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    # pip install . needs the project metadata, and the readme it names.
    copied = {s for c in copies for s in shlex.split(c.args)[:-1]}
    assert {"pyproject.toml", "README.md", "pensu"} <= copied
    # Local state never enters the build context.
    for path in (".venv/bin/python", ".git/HEAD", "models/x.bin", "pensu/__pycache__/m.cpython-311.pyc"):
        assert dockerignored(path, patterns), path


def test_models_dir_is_a_volume(final: list[Instruction], defaults: Settings) -> None:
    env = final_env(final)
    models_dir = env.get("PENSU_MODELS_DIR")
    if models_dir is None:  # relative default, resolved against the working directory
        workdir = only(final, "WORKDIR")[-1].args
        models_dir = str(PurePosixPath(workdir) / defaults.models_dir)
    volumes = set()
    for instruction in only(final, "VOLUME"):
        volumes.update(instruction.exec_form() or instruction.args.split())
    assert models_dir in volumes


def test_exposes_the_settings_ports(final: list[Instruction], defaults: Settings) -> None:
    exposed = {int(p.split("/")[0]) for i in only(final, "EXPOSE") for p in i.args.split()}
    assert exposed == {defaults.ping_listen_port, defaults.http_port}


def test_healthcheck_pings_the_ping_port(final: list[Instruction], defaults: Settings) -> None:
    checks = only(final, "HEALTHCHECK")
    assert len(checks) == 1
    args = checks[0].args
    assert " CMD " in f" {args} "
    command = args.split(" CMD ", 1)[1] if " CMD " in args else args.split("CMD ", 1)[1]
    assert "ping" in command and "pong" in command
    assert f"'{defaults.ping_listen_port}'" in command or str(defaults.ping_listen_port) in command
    assert "import socket" in command or ",socket" in command  # standard library only


def test_healthcheck_command_works_against_a_real_ping_server(final: list[Instruction]) -> None:
    """Run the HEALTHCHECK's python command against a ping server: exit 0 on pong, else not."""
    import socket
    import threading

    command = only(final, "HEALTHCHECK")[0].args.split(" CMD ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"]

    def serve(listener: socket.socket, reply: bytes) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            conn.sendall(reply)

    results = {}
    for reply in (b"pong\n", b"not_ready dead stopping\n"):
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        thread = threading.Thread(target=serve, args=(listener, reply), daemon=True)
        thread.start()
        env = {**os.environ, "PENSU_PING_LISTEN_PORT": str(port)}
        proc = subprocess.run([sys.executable, "-c", argv[2]], env=env, timeout=30, capture_output=True)
        thread.join(5)
        listener.close()
        results[reply] = proc.returncode
    assert results[b"pong\n"] == 0
    assert results[b"not_ready dead stopping\n"] != 0


def test_entrypoint_and_cmd(final: list[Instruction]) -> None:
    assert only(final, "ENTRYPOINT")[-1].exec_form() == ["pensu"]
    assert only(final, "CMD")[-1].exec_form() == ["run"]


def test_pensu_variables_are_real_settings(final: list[Instruction]) -> None:
    env = final_env(final)
    pensu_vars = {k: v for k, v in env.items() if k.startswith("PENSU_")}
    assert set(pensu_vars) <= known_variables()
    load_settings(pensu_vars)


def test_warmup_snippet_uses_the_model_api(final: list[Instruction]) -> None:
    snippets = warmup_snippets(final)
    assert len(snippets) == 1
    code = snippets[0]
    compile(code, "<dockerfile warm-up>", "exec")
    assert "HtmModel.from_preset(" in code and ".step(" in code


@pytest.mark.slow
def test_warmup_snippet_runs_and_fills_the_numba_cache(final: list[Instruction], tmp_path: Path) -> None:
    """Execute the Dockerfile's warm-up as the image would, into an empty NUMBA_CACHE_DIR."""
    for module in ("pensu.htm.temporal_memory", "pensu.htm.predictor"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not written yet")
    code = warmup_snippets(final)[0]
    cache = tmp_path / "numba"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), **{
        k: v for k, v in final_env(final).items() if k.startswith("NUMBA_") and k != "NUMBA_CACHE_DIR"}}
    proc = subprocess.run([sys.executable, "-"], input=code, text=True, env=env, cwd=tmp_path,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "numba cache warmed" in proc.stdout
    index_files = list(cache.rglob("*.nbi"))
    data_files = list(cache.rglob("*.nbc"))
    assert index_files and data_files
    # Kernels of every numba module the model uses were compiled.
    compiled_modules = {p.name.split(".")[0] for p in index_files}
    assert {"spatial_pooler", "temporal_memory"} <= compiled_modules, compiled_modules
