"""Method-path normalisation: daprd's decode, reject, clean and re-encode, as a table."""

from __future__ import annotations

import pytest

from fastproxy.errors import InvokeError
from fastproxy.methodpath import clean_path, normalize_method

# (raw method part as the client sent it, path the app must receive)
ACCEPTED = [
    pytest.param(b"hello", b"/hello", id="plain"),
    pytest.param(b"api/v1/add", b"/api/v1/add", id="nested"),
    pytest.param(b"", b"/", id="empty-is-root"),
    pytest.param(b"foo/", b"/foo", id="trailing-slash-removed"),
    pytest.param(b"a/b/", b"/a/b", id="nested-trailing-slash-removed"),
    pytest.param(b"/foo", b"/foo", id="leading-slash-kept-once"),
    pytest.param(b"a//b", b"/a/b", id="repeated-slashes-collapsed"),
    pytest.param(b"./a", b"/a", id="leading-dot-segment"),
    pytest.param(b"a/./b/", b"/a/b", id="inner-dot-segment"),
    pytest.param(b".", b"/", id="lone-dot"),
    pytest.param(b"..", b"/", id="lone-dotdot"),
    pytest.param(b"a/../b", b"/b", id="dotdot-resolved"),
    pytest.param(b"../../etc/passwd", b"/etc/passwd", id="dotdot-never-climbs-above-root"),
    pytest.param(b"a/../../../b", b"/b", id="more-dotdots-than-segments"),
    pytest.param(b"admin%2F..%2Fpublic", b"/public", id="encoded-slash-traversal-resolved"),
    pytest.param(b"%2e%2e/%2E%2E/x", b"/x", id="encoded-dots-never-climb"),
    pytest.param(b"a%2Fb", b"/a/b", id="encoded-slash-becomes-separator"),
    pytest.param(b"test%22stream", b"/test%22stream", id="quote-accepted-reencoded"),
    pytest.param(b"test%2Astream", b"/test*stream", id="star-accepted"),
    pytest.param(b"test%5Cstream", b"/test%5Cstream", id="backslash-accepted-reencoded"),
    pytest.param(b"test%25stream", b"/test%25stream", id="percent-reencoded"),
    pytest.param(b"a%20b", b"/a%20b", id="encoded-space-stays-encoded"),
    pytest.param(b"a b", b"/a%20b", id="raw-space-encoded"),
    pytest.param(b"caf\xc3\xa9", b"/caf%C3%A9", id="raw-utf8-encoded"),
    pytest.param(b"caf%C3%A9", b"/caf%C3%A9", id="encoded-utf8-kept"),
    pytest.param(b"caf%c3%a9", b"/caf%C3%A9", id="lowercase-hex-normalised"),
    pytest.param(b"%41%42", b"/AB", id="unreserved-decoded"),
    pytest.param(b"a+b", b"/a+b", id="plus-is-not-space"),
    pytest.param(b"a;b=c,d", b"/a;b=c,d", id="sub-delims-kept"),
    pytest.param(b"~user/x-y_z.txt", b"/~user/x-y_z.txt", id="unreserved-kept"),
    pytest.param(b"a:b@c", b"/a:b@c", id="colon-and-at-kept"),
]

# (raw method part, the character named in the error)
REJECTED = [
    pytest.param(b"test%23stream", "#", id="encoded-hash"),
    pytest.param(b"test%3Fstream", "?", id="encoded-question-mark"),
    pytest.param(b"test%3fstream", "?", id="encoded-question-mark-lowercase"),
    pytest.param(b"test%00stream", "\x00", id="encoded-nul"),
    pytest.param(b"test%0Dstream", "\r", id="encoded-cr"),
    pytest.param(b"test%0Astream", "\n", id="encoded-lf"),
    pytest.param(b"test%09stream", "\t", id="encoded-tab"),
    pytest.param(b"test%1Fstream", "\x1f", id="encoded-unit-separator"),
    pytest.param(b"test%7Fstream", "\x7f", id="encoded-del"),
    pytest.param(b"a/b%23/../c", "#", id="hash-inside-removed-segment"),
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_normalize_method_gives_app_facing_path(raw: bytes, expected: bytes) -> None:
    assert normalize_method(raw) == expected


@pytest.mark.parametrize(("raw", "char"), REJECTED)
def test_normalize_method_rejects_forbidden_characters_as_500(raw: bytes, char: str) -> None:
    with pytest.raises(InvokeError) as caught:
        normalize_method(raw)
    error = caught.value
    assert error.status == 500
    assert error.error_code == "ERR_DIRECT_INVOKE"
    assert "invalid method" in error.message
    assert "forbidden character" in error.message
    assert repr(char) in error.message


@pytest.mark.parametrize(("raw", "_expected"), ACCEPTED)
def test_normalized_method_is_safe_in_a_request_line(raw: bytes, _expected: bytes) -> None:
    result = normalize_method(raw)
    assert result.startswith(b"/")
    assert not any(b <= 0x20 or b >= 0x7F for b in result), result
    assert b"?" not in result
    assert b"#" not in result
    segments = result.split(b"/")[1:]
    assert b".." not in segments
    assert b"." not in segments
    assert result == b"/" or not result.endswith(b"/")


@pytest.mark.parametrize(("raw", "_expected"), ACCEPTED)
def test_normalize_method_is_idempotent(raw: bytes, _expected: bytes) -> None:
    once = normalize_method(raw)
    assert normalize_method(once.lstrip(b"/")) == once


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(b"/", b"/", id="root"),
        pytest.param(b"", b"/", id="empty"),
        pytest.param(b"/a/b", b"/a/b", id="clean-already"),
        pytest.param(b"/a/b/", b"/a/b", id="trailing-slash"),
        pytest.param(b"//a///b//", b"/a/b", id="repeated-slashes"),
        pytest.param(b"/a/./b/.", b"/a/b", id="dot-segments"),
        pytest.param(b"/a/b/../c", b"/a/c", id="dotdot"),
        pytest.param(b"/../a", b"/a", id="dotdot-at-root"),
        pytest.param(b"/../../..", b"/", id="only-dotdots"),
        pytest.param(b"/a/../../b/../c", b"/c", id="mixed"),
        pytest.param(b"/...", b"/...", id="three-dots-is-a-name"),
        pytest.param(b"/.a/..b", b"/.a/..b", id="dot-prefixed-names"),
    ],
)
def test_clean_path_matches_go_path_clean(path: bytes, expected: bytes) -> None:
    assert clean_path(path) == expected
