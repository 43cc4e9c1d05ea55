"""EditRequest validation and the value types."""

from __future__ import annotations

import hashlib
import json
import re

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from seedream_async import AspectRatio, EditRequest, InvalidRequest, Quality, TaskState, _models
from seedream_async._models import _PLAIN_URL, _plain_url, parse_url, url_text

URLS = ["https://img.example/a.png"]


def test_defaults_and_plain_strings() -> None:
    req = EditRequest(prompt="p", image_urls=URLS, aspect_ratio="16:9", quality="high")
    assert req.aspect_ratio is AspectRatio.LANDSCAPE_16_9
    assert req.quality is Quality.HIGH
    assert req.image_urls == (URL(URLS[0]),)
    assert EditRequest(prompt="p", image_urls=URLS).aspect_ratio is AspectRatio.SQUARE


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 3001}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "half a pair: \ud83d"}, "prompt"),  # no UTF-8 can carry it
        ({"image_urls": []}, "image_urls"),
        ({"image_urls": [f"https://a/{i}.png" for i in range(15)]}, "image_urls"),
        ({"image_urls": ["ftp://a/b.png"]}, "image_urls"),
        ({"image_urls": ["/relative.png"]}, "image_urls"),
        ({"image_urls": "https://a/b.png"}, "image_urls"),
        ({"image_urls": ["http://[::1"]}, "image_urls"),
        ({"aspect_ratio": "5:4"}, "aspect_ratio"),
        ({"quality": "ultra"}, "quality"),
        ({"nsfw_checker": "yes"}, "nsfw_checker"),
    ],
)
def test_invalid_fields_are_named(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"prompt": "p", "image_urls": URLS, **kwargs}
    with pytest.raises(InvalidRequest) as info:
        EditRequest(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_limits_are_inclusive() -> None:
    many = [f"https://a/{i}.png" for i in range(14)]
    assert len(EditRequest(prompt="x" * 3000, image_urls=many).image_urls) == 14


def test_a_fingerprint_never_changes_across_versions() -> None:
    """Journals of earlier runs match inputs by it: these digests were made by release code."""
    plain = EditRequest(prompt="p", image_urls=["https://a.example/x.png"])
    odd = EditRequest(
        prompt="Make it blue — ünïcode",
        image_urls=["https://img.example/a%20b.png", "https://Img.Example/x/../y.png?q=1"],
        aspect_ratio="16:9",
        quality="high",
        nsfw_checker=False,
    )
    assert plain.fingerprint() == "4cde0b5c47c254cade55c317238da3b7e0fdee9b7e3385b7c08c6eef1dcaba3d"
    assert odd.fingerprint() == "0753d91b15e709bea47551ffeff03df4a75945b74baf47ecc1e5e0e57d9fa25f"


@settings(max_examples=300, deadline=None)
@given(
    prompt=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
        str.strip
    ),
    paths=st.lists(st.text('ab/%._-~é"\\', max_size=8), min_size=1, max_size=3),
    aspect_ratio=st.sampled_from(list(AspectRatio)),
    quality=st.sampled_from(list(Quality)),
    nsfw_checker=st.sampled_from([None, True, False]),
)
def test_a_fingerprint_is_the_digest_of_the_requests_canonical_json(
    prompt: str,
    paths: list[str],
    aspect_ratio: AspectRatio,
    quality: Quality,
    nsfw_checker: bool | None,
) -> None:
    """Whatever the prompt holds (quotes, escapes, control characters, astral planes)."""
    try:
        request = EditRequest(
            prompt=prompt,
            image_urls=[f"https://img.example/{p}" for p in paths],
            aspect_ratio=aspect_ratio,
            quality=quality,
            nsfw_checker=nsfw_checker,
        )
    except InvalidRequest:
        return
    canonical = json.dumps(
        [
            request.prompt,
            [str(u) for u in request.image_urls],
            aspect_ratio.value,
            quality.value,
            nsfw_checker,
        ],
        separators=(",", ":"),
    )
    assert request.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()


def test_frozen_and_fingerprint_stable() -> None:
    a = EditRequest(prompt="p", image_urls=URLS)
    b = EditRequest(prompt="p", image_urls=[URL(URLS[0])], aspect_ratio=AspectRatio.SQUARE)
    assert a == b
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != attrs.evolve(a, prompt="q").fingerprint()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.prompt = "q"  # type: ignore[misc]


def test_unknown_state_is_pending() -> None:
    assert TaskState.parse("teleporting") is TaskState.UNKNOWN
    assert not TaskState.UNKNOWN.is_final
    assert TaskState.parse("fail").is_final


# --- URLs taken as they stand -------------------------------------------------------------

_HOSTS = st.one_of(
    st.sampled_from(["img.example", "Img.example", "x", "1.2.3.4", "01.2.3.4", "a..b", "a_b"]),
    st.text("abcxyXY019.-_é", min_size=1, max_size=12),
)
_SEGMENTS = st.sampled_from(
    [
        *("", "a", "A-1_b.png", ".", "..", "...", ".x", "a%41", "a%2f", "~u", "a,b=c+d@e:f"),
        *("a b", "é", 'a"b', "{x}", "a|b", "a^b", "a;b", "a!b", "a$b", "a'b", "a(b)", "a*b"),
        *("a#b", "a?b"),
    ]
)
_QUERIES = st.sampled_from(
    ["", "?", "?a=1", "?a=1&b=2", "?a+b", "?a=%41", "?~x", "?a=/b", "?é", "?a b", "?a;b", "?a#b"]
)
_PORTS = st.sampled_from(["", ":80", ":443", ":8080", ":65535", ":65536", ":099", ":0", ":"])


@st.composite
def _url_strings(draw: st.DrawFn) -> str:
    """Mostly URLs yarl keeps as they are, with one thing it would change now and then."""
    scheme = draw(st.sampled_from(["http", "https", "https", "HTTPS", "ftp"]))
    path = "".join("/" + s for s in draw(st.lists(_SEGMENTS, max_size=4)))
    return f"{scheme}://{draw(_HOSTS)}{draw(_PORTS)}{path}{draw(_QUERIES)}"


def _seen(url: URL) -> tuple[object, ...]:
    """What a caller can see of a URL (each property read on a fresh copy's cache)."""
    return (
        str(url),
        url.scheme,
        url.host,
        url.raw_host,
        url.port,
        url.explicit_port,
        url.path,
        url.raw_path,
        url.query_string,
        url.raw_query_string,
        url.parts,
        url.name,
        hash(url),
        str(url / "child.png"),
        str(url.with_query(size="2")),
    )


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        _url_strings(),
        st.from_regex(r"https?://[a-z0-9./:?=&_-]{1,24}", fullmatch=True),
        st.from_regex(_PLAIN_URL, fullmatch=True),  # the fast path's whole grammar
    )
)
# What yarl changes in a string, once each: the case of a host, dot segments, a port out of
# range, escapes of characters that need none, a plus or an escape in a query.
@example("http://Img.example/a.png")
@example("https://a/x/../y.png")
@example("https://a/x/./y.png")
@example("http://a:65536/a.png")
@example("http://a/%7ex.png")
@example("http://a/b.png?q=%7e")
@example("http://a/b.png?q=a+b")
def test_a_url_taken_as_it_stands_is_the_url_yarl_parses(raw: str) -> None:
    try:
        parsed = URL(raw)
    except ValueError as e:
        with pytest.raises(ValueError, match=re.escape(str(e))):
            parse_url(raw)
        return
    fast = parse_url(raw)
    assert fast == parsed
    assert _seen(fast) == _seen(URL(raw))
    if fast.scheme in ("http", "https") and fast.host and raw.isprintable() and " " not in raw:
        assert EditRequest(prompt="p", image_urls=[raw]).image_urls == (parsed,)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        _url_strings(),
        st.from_regex(r"[a-z]{0,5}:?/{0,2}[a-zA-Z0-9.@:\[\]/?#=&%_-]{0,24}", fullmatch=True),
        st.from_regex(_PLAIN_URL, fullmatch=True),
    )
)
@example("https://img.example:443/a.png")  # yarl drops a default port
@example("http://img.example:80")
@example("https://user:pw@img.example/a.png")
@example("http://[::1]:8080/a.png")
@example("https://img.example?q=1")  # no path, a query: yarl prints "/" before it
@example("https://img.example#top")
@example("https://img.example/a.png?q=1#top")
@example("https://xn--bcher-kva.example/a.png")
@example("/relative/path")
@example("mailto:someone@example.com")
def test_a_url_prints_alike_through_its_parts(raw: str) -> None:
    """``url_text`` is ``str`` (the createTask body and journal fingerprints depend on it)."""
    try:
        parsed = URL(raw)
    except ValueError:
        return
    fast = parse_url(raw)
    assert url_text(fast) == str(fast)
    assert url_text(parsed) == str(parsed)
    again = URL(str(parsed))  # its cache filled as yarl parses
    assert url_text(again) == str(again)


def test_the_usual_url_is_split_only() -> None:
    """The fast path is taken for a plain image URL (else the test above proves nothing)."""
    raw = "https://cdn.example.com:8443/images/a-1_b.png?v=2&w=1024"
    assert _plain_url(raw) == URL(raw)
    assert _plain_url("https://cdn.example.com/a b.png") is None  # re-quoted: yarl's parse


def test_urls_on_one_host_share_its_string_and_the_table_stays_bounded() -> None:
    """A parked edit's URL keeps no host string of its own; hosts a service invents come and
    go (never kept forever, as ``sys.intern`` would on builds where interned strings are
    immortal)."""
    one = EditRequest(prompt="p", image_urls=["https://cdn.example.com/a.png"])
    two = EditRequest(prompt="p", image_urls=["https://cdn." + "example.com/b.png"])
    first, second = one.image_urls[0], two.image_urls[0]
    assert isinstance(first, URL)
    assert isinstance(second, URL)
    assert first.raw_authority is second.raw_authority
    for n in range(3 * _models._HOSTS_MAX):
        parse_url(f"https://h{n}.example/r.png")
        assert len(_models._HOSTS) <= _models._HOSTS_MAX
    assert (
        parse_url("https://last.example/a").raw_authority
        is parse_url("https://last.example/b").raw_authority
    )
