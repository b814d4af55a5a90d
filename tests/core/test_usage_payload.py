"""The signed bytes of a usage report: `usage_signing.payload` writes the common case out
by hand (it runs per report on the event loop and in the writer); it must give exactly
the canonical JSON that workers sign and disputes re-check (docs/wire.md)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from common import usage_signing
from common.canonical import canonical
from common.money import USAGE_FIELDS


def by_the_rule(session_id, usage, seq=0, final=False):
    body = {"session_id": session_id,
            "usage": {name: usage.get(name, 0) for name in USAGE_FIELDS}}
    if final:
        body["final"] = True
    else:
        body["seq"] = seq
    return canonical(body)


counters = st.one_of(st.integers(min_value=-10**18, max_value=10**18), st.booleans(),
                     st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=500, deadline=None)
@given(session_id=st.one_of(st.text(), st.from_regex(r"ses_[0-9a-f]{24}", fullmatch=True)),
       usage=st.dictionaries(st.sampled_from(USAGE_FIELDS), counters),
       seq=st.one_of(st.integers(min_value=0, max_value=2**64), st.booleans()),
       final=st.booleans())
def test_the_payload_is_the_canonical_json_of_the_report(session_id, usage, seq, final):
    assert usage_signing.payload(session_id, usage, seq=seq, final=final) == \
        by_the_rule(session_id, usage, seq, final)


def test_a_plain_report_and_ids_that_need_escaping():
    usage = {"gpu_ms": 1500, "output_tokens": 7}
    assert usage_signing.payload("ses_0a", usage, seq=3) == (
        b'{"seq":3,"session_id":"ses_0a","usage":{"calls":0,"energy_mj":0,"gpu_ms":1500,'
        b'"input_tokens":0,"output_tokens":7}}')
    for odd in ('a"b', "a\\b", "\x00", "\x7f", "é", "\u2028", ""):
        assert usage_signing.payload(odd, usage, final=True) == by_the_rule(odd, usage,
                                                                            final=True)
