"""Readers for the deployment files (Dockerfile, compose, Logstash, Grafana) used by the stack tests.

Small, strict parsers: each understands exactly the subset of its format those files use and
raises `ValueError` on anything it cannot parse, so a syntax slip fails a test instead of
being skipped over.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "docker-compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOGSTASH_PIPELINE = REPO / "logstash" / "pipeline" / "pensu.conf"
GRAFANA_DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "graphite.yaml"
GRAFANA_DASHBOARD_PROVIDER = REPO / "grafana" / "provisioning" / "dashboards" / "pensu.yaml"
GRAFANA_DASHBOARD = REPO / "grafana" / "dashboards" / "pensu.json"


# --- compose ---------------------------------------------------------------------------------

def load_compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose accepts a mapping or a KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command_args(service: dict[str, Any]) -> list[str]:
    """A service's command as an argument list."""
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def option_value(args: list[str], option: str) -> str | None:
    """The value after `option` in an argument list (or `option=value`), None when absent."""
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class Mount:
    """One `volumes:` entry of a service in short syntax."""

    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        """True for a host path (relative or absolute), False for a named volume."""
        return self.source.startswith((".", "/", "~"))


def service_mounts(service: dict[str, Any]) -> list[Mount]:
    """A service's volume mounts."""
    mounts = []
    for entry in service.get("volumes") or []:
        if not isinstance(entry, str):
            raise ValueError(f"long-syntax volume entries are not used here: {entry!r}")
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"cannot parse volume entry {entry!r}")
        mounts.append(Mount(parts[0], parts[1], len(parts) == 3 and "ro" in parts[2].split(",")))
    return mounts


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container-side ports a service publishes."""
    ports = set()
    for entry in service.get("ports") or []:
        text = str(entry).split("/", 1)[0]
        ports.add(int(text.rsplit(":", 1)[-1]))
    return ports


# --- Dockerfile ------------------------------------------------------------------------------

@dataclass
class Instruction:
    """One Dockerfile instruction: keyword, argument text, heredoc bodies, build stage index."""

    keyword: str
    args: str
    stage: int
    heredocs: list[str] = field(default_factory=list)

    def exec_form(self) -> list[str] | None:
        """The JSON-array (exec) form of the arguments, or None for shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{self.keyword}: exec form must be a list of strings")
            return value
        return None


_HEREDOC = re.compile(r"<<-?(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: joins continuation lines, drops comments, reads heredocs."""
    lines = text.splitlines()
    out: list[Instruction] = []
    stage = -1
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        logical = line
        while logical.rstrip().endswith("\\"):
            logical = logical.rstrip()[:-1] + " "
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                i += 1  # comment lines inside a continuation are ignored by Docker
            if i >= len(lines):
                raise ValueError("Dockerfile ends inside a line continuation")
            logical += lines[i].strip()
            i += 1
        keyword, _, args = logical.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        heredocs = []
        for match in _HEREDOC.finditer(args):
            delimiter = match.group(2)
            body = []
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"heredoc {delimiter!r} is never closed")
            i += 1
            heredocs.append("\n".join(body) + "\n")
        out.append(Instruction(keyword, args.strip(), stage, heredocs))
    return out


def parse_env_args(args: str) -> dict[str, str]:
    """Variables of an ENV instruction (`K=V K2=V2` form)."""
    env = {}
    for token in shlex.split(args):
        if "=" not in token:
            raise ValueError(f"ENV in legacy 'KEY value' form is not used here: {args!r}")
        key, value = token.split("=", 1)
        env[key] = value
    return env


def dockerignore_patterns() -> list[str]:
    """Non-comment lines of .dockerignore."""
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's glob: `*` and `?` stay within a path element, `**` spans any number of them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether a context-relative path is excluded: it or one of its parent directories matches
    the last matching pattern, unless that pattern is a `!` exception."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _dockerignore_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


# --- Graphite target expressions --------------------------------------------------------------

@dataclass(frozen=True)
class _Tok:
    kind: str  # "word", "string", "(", ")", ","
    text: str


def _graphite_tokens(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            toks.append(_Tok(c, c))
            i += 1
        elif c in "'\"":
            end = expr.find(c, i + 1)
            while end > 0 and expr[end - 1] == "\\":
                end = expr.find(c, end + 1)
            if end < 0:
                raise ValueError(f"unterminated string in {expr!r}")
            toks.append(_Tok("string", expr[i + 1:end]))
            i = end + 1
        else:
            # A series path may hold {a,b} alternatives, whose commas are not argument separators.
            start, depth = i, 0
            while i < len(expr):
                ch = expr[i]
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
                    if depth < 0:
                        raise ValueError(f"unbalanced braces in {expr!r}")
                elif depth == 0 and (ch in "(),'\"" or ch.isspace()):
                    break
                i += 1
            if depth:
                raise ValueError(f"unbalanced braces in {expr!r}")
            toks.append(_Tok("word", expr[start:i]))
    return toks


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def graphite_series_paths(expr: str) -> list[str]:
    """The series path expressions inside a Graphite target, functions and literals stripped."""
    toks = _graphite_tokens(expr)
    paths: list[str] = []
    pos = 0

    def value() -> None:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError(f"unexpected end of {expr!r}")
        tok = toks[pos]
        pos += 1
        if tok.kind == "string":
            return
        if tok.kind != "word":
            raise ValueError(f"unexpected {tok.text!r} in {expr!r}")
        if pos < len(toks) and toks[pos].kind == "(":
            pos += 1
            if toks[pos].kind == ")":
                pos += 1
                return
            while True:
                value()
                if pos >= len(toks):
                    raise ValueError(f"unclosed call in {expr!r}")
                sep = toks[pos]
                pos += 1
                if sep.kind == ")":
                    return
                if sep.kind != ",":
                    raise ValueError(f"expected ',' or ')' in {expr!r}, got {sep.text!r}")
        elif tok.text.lower() in ("true", "false", "none") or _NUMBER.fullmatch(tok.text):
            return
        elif tok.text.startswith("#"):
            return  # reference to another query of the panel
        else:
            paths.append(tok.text)

    value()
    if pos != len(toks):
        raise ValueError(f"trailing text in {expr!r}")
    return paths


def graphite_glob_matches(pattern: str, name: str) -> bool:
    """Whether a Graphite glob (with `*`, `**`, `[..]` and `{a,b}`) matches a full series name."""
    alternatives = [pattern]
    expanded: list[str] = []
    while alternatives:
        pat = alternatives.pop()
        m = re.search(r"\{([^{}]*)\}", pat)
        if m is None:
            expanded.append(pat)
            continue
        for option in m.group(1).split(","):
            alternatives.append(pat[: m.start()] + option + pat[m.end():])
    for pat in expanded:
        if "**" in pat:
            if fnmatch.fnmatchcase(name, pat.replace("**", "*")):
                return True
            continue
        # Outside `**`, a wildcard never crosses a dot: compare node by node.
        p_nodes, n_nodes = pat.split("."), name.split(".")
        if len(p_nodes) == len(n_nodes) and all(
                fnmatch.fnmatchcase(n, p) for p, n in zip(p_nodes, n_nodes)):
            return True
    return False


# --- Logstash pipeline -----------------------------------------------------------------------

@dataclass
class Plugin:
    """A plugin block: `name { attr => value ... }`."""

    name: str
    attrs: list[tuple[str, Any]]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of an attribute (the last one when repeated)."""
        found = default
        for k, v in self.attrs:
            if k == key:
                found = v
        return found


@dataclass
class Branch:
    """An `if` / `else if` / `else` chain; a clause's condition is None for `else`."""

    clauses: list[tuple[str | None, list[Any]]]


class LogstashParser:
    """Recursive-descent parser of the Logstash pipeline language (sections, plugins, branches)."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def _error(self, message: str) -> ValueError:
        line = self.s.count("\n", 0, self.i) + 1
        return ValueError(f"logstash config line {line}: {message}")

    def _ws(self) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c.isspace():
                self.i += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            else:
                return

    def _peek(self) -> str:
        self._ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def _expect(self, text: str) -> None:
        self._ws()
        if not self.s.startswith(text, self.i):
            raise self._error(f"expected {text!r}, found {self.s[self.i:self.i + 20]!r}")
        self.i += len(text)

    def _bareword(self) -> str:
        self._ws()
        m = re.compile(r"[A-Za-z0-9_@.\-]+").match(self.s, self.i)
        if m is None:
            raise self._error(f"expected a name, found {self.s[self.i:self.i + 20]!r}")
        self.i = m.end()
        return m.group(0)

    def _string(self) -> str:
        quote = self.s[self.i]
        out = []
        self.i += 1
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s) and self.s[self.i + 1] == quote:
                out.append(quote)
                self.i += 2
                continue
            if c == quote:
                self.i += 1
                return "".join(out)
            out.append(c)
            self.i += 1
        raise self._error("unterminated string")

    def parse(self) -> dict[str, list[Any]]:
        """Sections (`input`, `filter`, `output`) and their contents."""
        sections: dict[str, list[Any]] = {}
        while self._peek():
            name = self._bareword()
            if name not in ("input", "filter", "output"):
                raise self._error(f"unknown section {name!r}")
            self._expect("{")
            sections.setdefault(name, []).extend(self._body())
            self._expect("}")
        return sections

    def _body(self) -> list[Any]:
        nodes: list[Any] = []
        while self._peek() not in ("}", ""):
            if re.match(r"if\b", self.s[self.i:]):
                nodes.append(self._branch())
            else:
                nodes.append(self._plugin())
        return nodes

    def _plugin(self) -> Plugin:
        name = self._bareword()
        self._expect("{")
        attrs = []
        while self._peek() != "}":
            if not self._peek():
                raise self._error("unterminated plugin block")
            key = self._bareword()
            self._expect("=>")
            attrs.append((key, self._value()))
        self._expect("}")
        return Plugin(name, attrs)

    def _value(self) -> Any:
        c = self._peek()
        if c in "\"'":
            return self._string()
        if c == "[":
            self.i += 1
            items = []
            while self._peek() != "]":
                items.append(self._value())
                if self._peek() == ",":
                    self.i += 1
            self.i += 1
            return items
        if c == "{":
            self.i += 1
            entries: dict[str, Any] = {}
            while self._peek() != "}":
                key = self._string() if self._peek() in "\"'" else self._bareword()
                self._expect("=>")
                entries[key] = self._value()
                if self._peek() == ",":
                    self.i += 1
            self.i += 1
            return entries
        word = self._bareword()
        if self._peek() == "{":  # a nested plugin, e.g. `codec => line { ... }`
            self.i = self.s.rindex(word, 0, self.i)
            return self._plugin()
        if _NUMBER.fullmatch(word):
            return float(word) if any(ch in word for ch in ".eE") else int(word)
        return word

    def _condition(self) -> str:
        """Raw condition text up to the block's `{` (strings and /regex/ literals skipped)."""
        self._ws()
        start = self.i
        depth = 0
        previous = ""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in "\"'":
                self._string()
                previous = "x"
                continue
            if c == "/" and previous in ("=~", "!~"):
                end = self.i + 1
                while end < len(self.s) and self.s[end] != "/":
                    end += 2 if self.s[end] == "\\" else 1
                if end >= len(self.s):
                    raise self._error("unterminated regex literal")
                self.i = end + 1
                previous = "x"
                continue
            if c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            elif c == "{" and depth == 0:
                return self.s[start:self.i].strip()
            if self.s.startswith(("=~", "!~"), self.i):
                previous = self.s[self.i:self.i + 2]
                self.i += 2
                continue
            if not c.isspace():
                previous = c
            self.i += 1
        raise self._error("condition without a block")

    def _branch(self) -> Branch:
        self._expect("if")
        clauses = [(self._condition(), self._block())]
        while True:
            self._ws()
            if re.match(r"else\s+if\b", self.s[self.i:]):
                self._expect("else")
                self._expect("if")
                clauses.append((self._condition(), self._block()))
            elif re.match(r"else\b", self.s[self.i:]):
                self._expect("else")
                clauses.append((None, self._block()))
                return Branch(clauses)
            else:
                return Branch(clauses)

    def _block(self) -> list[Any]:
        self._expect("{")
        nodes = self._body()
        self._expect("}")
        return nodes


def iter_plugins(nodes: list[Any]) -> Iterator[Plugin]:
    """Every plugin in a section, including those inside branches (not nested codecs)."""
    for node in nodes:
        if isinstance(node, Plugin):
            yield node
        else:
            for _, body in node.clauses:
                yield from iter_plugins(body)


def iter_conditions(nodes: list[Any]) -> Iterator[str]:
    """Every branch condition in a section."""
    for node in nodes:
        if isinstance(node, Branch):
            for condition, body in node.clauses:
                if condition is not None:
                    yield condition
                yield from iter_conditions(body)


def load_logstash_pipeline() -> dict[str, list[Any]]:
    """The parsed logstash/pipeline/pensu.conf."""
    return LogstashParser(LOGSTASH_PIPELINE.read_text()).parse()
