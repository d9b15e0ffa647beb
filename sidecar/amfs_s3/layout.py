"""The S3 object layout (DESIGN.md, a public contract) as pure key math.

```
{prefix}{namespace}/entries/{entity_path}/{key}/v{version}.json
{prefix}{namespace}/outcomes/{outcome_ref}.json
{prefix}{namespace}/journal/{ms:013d}-{writer}-{seq:06d}.json
```

Every name segment (each entity segment, the key, the outcome ref, the namespace)
becomes ONE object-key segment through :func:`escape_segment`: ``%`` → ``%25``,
``/`` → ``%2F``, ``\\`` → ``%5C``. Names without those three characters keep
byte-identical object keys; a key may hold ``/`` without aliasing an entity below
it; and no provider that reads ``\\`` as ``/`` (SeaweedFS) can merge two names.

Nothing here talks to S3, so every rule is testable in isolation.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from amfs_s3.exceptions import InvalidNameError

MAX_S3_KEY_BYTES = 1024
# SeaweedFS refuses a longer segment (KeyTooLongError), and so do most file-backed stores.
MAX_SEGMENT_BYTES = 255

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.json$")
_JOURNAL_FILE = re.compile(r"^(\d{13})-(.+)-(\d{6})\.json$")
_WRITER = re.compile(r"^[A-Za-z0-9._]+(?:-[A-Za-z0-9._]+)*$")

_ESCAPES = {"%": "%25", "/": "%2F", "\\": "%5C"}
_UNESCAPES = {code: char for char, code in _ESCAPES.items()}
_TO_ESCAPE = re.compile(r"[%/\\]")
# What escape_segment can produce: escapes, or runs free of the three characters.
_ESCAPED = re.compile(r"(?:%25|%2F|%5C|[^%/\\])*")
_ESCAPE_CODE = re.compile(r"%25|%2F|%5C")

SEGMENT_RULE = (
    "segments may not be empty, '.' or '..', may not contain control characters, and are at "
    f"most {MAX_SEGMENT_BYTES} bytes of UTF-8 once '%', '/' and '\\' are escaped as "
    "%25, %2F and %5C"
)


def escape_segment(name: str) -> str:
    """*name* as one object-key segment: ``%`` → ``%25``, ``/`` → ``%2F``, ``\\`` → ``%5C``."""
    return _TO_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], name)


def unescape_segment(segment: str) -> str | None:
    """The name :func:`escape_segment` made *segment* from, or None if it made no such segment."""
    if not _ESCAPED.fullmatch(segment):
        return None
    return _ESCAPE_CODE.sub(lambda m: _UNESCAPES[m.group(0)], segment)


def _control_character(text: str) -> str | None:
    for char in text:
        if unicodedata.category(char) in {"Cc", "Cs"}:
            return char
    return None


def _check_segment(field: str, segment: str, rule: str, *, suffix: str = "") -> None:
    """*segment* is one name segment before escaping; *suffix* is what the object key
    adds to the same segment (``.json`` for outcomes)."""
    if segment == "":
        raise InvalidNameError(field, "has an empty segment", rule)
    if segment in {".", ".."}:
        raise InvalidNameError(field, f"segment {segment!r} is not allowed", rule)
    bad = _control_character(segment)
    if bad is not None:
        raise InvalidNameError(field, f"contains control character {bad!r}", rule)
    size = len((escape_segment(segment) + suffix).encode("utf-8"))
    if size > MAX_SEGMENT_BYTES:
        shown = segment if len(segment) <= 40 else segment[:37] + "..."
        raise InvalidNameError(
            field, f"segment {shown!r} makes an object-key segment of {size} bytes", rule
        )


def validate_entity_path(entity_path: object) -> str:
    """An entity path is non-empty segments joined by '/'."""
    rule = f"entity_path is segments joined by '/'; {SEGMENT_RULE}"
    if not isinstance(entity_path, str):
        raise InvalidNameError("entity_path", "must be a string", rule)
    if entity_path == "":
        raise InvalidNameError("entity_path", "is empty", rule)
    for segment in entity_path.split("/"):
        _check_segment("entity_path", segment, rule)
    return entity_path


def validate_key(key: object) -> str:
    """A key is one segment; a '/' in it is escaped, so entity 'a/b' key 'c' never
    aliases entity 'a' key 'b/c'."""
    rule = f"key is one segment ('/' is allowed and stored escaped); {SEGMENT_RULE}"
    if not isinstance(key, str):
        raise InvalidNameError("key", "must be a string", rule)
    _check_segment("key", key, rule)
    return key


def validate_outcome_ref(outcome_ref: object) -> str:
    rule = (f"outcome_ref is one segment ('/' is allowed and stored escaped; the object adds "
            f"'.json'); {SEGMENT_RULE}")
    if not isinstance(outcome_ref, str):
        raise InvalidNameError("outcome_ref", "must be a string", rule)
    _check_segment("outcome_ref", outcome_ref, rule, suffix=".json")
    return outcome_ref


def validate_writer(writer: str) -> str:
    if not _WRITER.match(writer):
        raise InvalidNameError(
            "writer", f"{writer!r} is not allowed", "letters, digits, '.', '_' and single '-'"
        )
    return writer


@dataclass(frozen=True)
class EntryObject:
    """What an object key under entries/ names."""

    entity_path: str
    key: str
    version: int


@dataclass(frozen=True)
class JournalName:
    """What a journal object key names: when, who, and the writer's sequence."""

    ms: int
    writer: str
    seq: int


@dataclass(frozen=True)
class Layout:
    """Key math for one AMFS namespace under one prefix of a bucket."""

    prefix: str = "amfs/"
    namespace: str = "default"

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        rule = "namespace is one segment without '/'; " + SEGMENT_RULE
        if not isinstance(self.namespace, str):
            raise InvalidNameError("namespace", "must be a string", rule)
        if "/" in self.namespace:
            raise InvalidNameError("namespace", f"{self.namespace!r} contains '/'", rule)
        _check_segment("namespace", self.namespace, rule)

    @property
    def root(self) -> str:
        return f"{self.prefix}{escape_segment(self.namespace)}/"

    @property
    def entries_root(self) -> str:
        return f"{self.root}entries/"

    @property
    def outcomes_root(self) -> str:
        return f"{self.root}outcomes/"

    @property
    def journal_root(self) -> str:
        return f"{self.root}journal/"

    @property
    def probe_root(self) -> str:
        return f"{self.root}_probe/"

    @property
    def index_root(self) -> str:
        """Compacted index snapshots and the lease of the one sidecar that writes them."""
        return f"{self.root}index/"

    # -- entries ---------------------------------------------------------

    def entity_dir(self, entity_path: str) -> str:
        segments = validate_entity_path(entity_path).split("/")
        return self.entries_root + "".join(escape_segment(s) + "/" for s in segments)

    def key_dir(self, entity_path: str, key: str) -> str:
        return f"{self.entity_dir(entity_path)}{escape_segment(validate_key(key))}/"

    def version_key(self, entity_path: str, key: str, version: int) -> str:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidNameError("version", f"{version!r} is not allowed", "version >= 1")
        object_key = f"{self.key_dir(entity_path, key)}v{version}.json"
        size = len(object_key.encode("utf-8"))
        if size > MAX_S3_KEY_BYTES:
            raise InvalidNameError(
                "entity_path/key",
                f"make an S3 key of {size} bytes",
                f"the whole S3 key must be <= {MAX_S3_KEY_BYTES} bytes",
            )
        return object_key

    def check_names(self, entity_path: str, key: str, version: int = 1) -> None:
        """Raise InvalidNameError unless (entity_path, key) can be stored."""
        # A generous version keeps room for the key to grow to v999999999.
        self.version_key(entity_path, key, max(version, 999_999_999))

    @staticmethod
    def parse_version_file(name: str) -> int | None:
        """``v12.json`` → 12; anything else → None (not a version object)."""
        match = _VERSION_FILE.match(name)
        return int(match.group(1)) if match else None

    def parse_entry_key(self, object_key: str) -> EntryObject | None:
        """Split an object key under entries/ into (entity_path, key, version)."""
        if not object_key.startswith(self.entries_root):
            return None
        parts = object_key[len(self.entries_root) :].split("/")
        if len(parts) < 3:
            return None
        version = self.parse_version_file(parts[-1])
        if version is None:
            return None
        names = [unescape_segment(part) for part in parts[:-1]]
        if any(name is None or name in {"", ".", ".."} for name in names):
            return None  # not an object this layout writes
        entity = "/".join(name for name in names[:-1] if name is not None)
        return EntryObject(entity_path=entity, key=names[-1] or "", version=version)

    # -- outcomes --------------------------------------------------------

    def outcome_key(self, outcome_ref: str) -> str:
        object_key = f"{self.outcomes_root}{escape_segment(validate_outcome_ref(outcome_ref))}.json"
        size = len(object_key.encode("utf-8"))
        if size > MAX_S3_KEY_BYTES:
            raise InvalidNameError(
                "outcome_ref",
                f"makes an S3 key of {size} bytes",
                f"the whole S3 key must be <= {MAX_S3_KEY_BYTES} bytes",
            )
        return object_key

    def parse_outcome_key(self, object_key: str) -> str | None:
        if not object_key.startswith(self.outcomes_root) or not object_key.endswith(".json"):
            return None
        ref = unescape_segment(object_key[len(self.outcomes_root) : -len(".json")])
        return ref if ref else None

    # -- journal ---------------------------------------------------------

    def journal_key(self, ms: int, writer: str, seq: int) -> str:
        return f"{self.journal_root}{ms:013d}-{validate_writer(writer)}-{seq % 1_000_000:06d}.json"

    def journal_start_after(self, ms: int) -> str:
        """A key that sorts just before every journal record written at or after *ms*."""
        return f"{self.journal_root}{max(ms, 0):013d}"

    def parse_journal_key(self, object_key: str) -> JournalName | None:
        if not object_key.startswith(self.journal_root):
            return None
        match = _JOURNAL_FILE.match(object_key[len(self.journal_root) :])
        if match is None:
            return None
        return JournalName(ms=int(match.group(1)), writer=match.group(2), seq=int(match.group(3)))


def is_within(entity_path: str, scope: str | None) -> bool:
    """Whether *entity_path* is *scope* or below it ('a/b' covers 'a/b/c', never 'a/bc').

    ``None``, ``""`` and ``"*"`` cover everything.
    """
    if scope in (None, "", "*"):
        return True
    scope = scope.rstrip("/")
    return entity_path == scope or entity_path.startswith(scope + "/")
