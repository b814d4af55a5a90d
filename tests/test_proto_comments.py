"""Every service, rpc, message, field, oneof, enum and enum value in protos/ has a leading
comment: agents in other languages read only the .proto files (docs/design.md).
buf's STANDARD rules do not check comments, so this does."""

import importlib.util
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts/gen_api_docs.py")
gen = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

SAMPLE = '''syntax = "proto3";

package sample.v1;

// A service.
service ThingService {
  // Documented.
  rpc Get(GetRequest) returns (GetResponse);
  rpc Watch(GetRequest) returns (stream GetResponse);
}

// A request.
message GetRequest {
  string id = 1; // a trailing comment is not a leading comment
  // Documented.
  map<string, int64> labels = 2;

  // A detached comment, separated by a blank line, does not count either.

  Inner inner = 3;
  // A nested message.
  message Inner {
    // Documented.
    oneof kind {
      string a = 1;
      // Documented.
      int64 b = 2;
    }
  }
  enum Colour {
    // Documented.
    COLOUR_UNSPECIFIED = 0;
    COLOUR_RED = 1;
  }
}

message GetResponse {}
'''


def test_every_element_of_the_contract_has_a_leading_comment():
    files = gen.load()
    found = list(gen.elements(files))
    kinds = Counter(e.kind for e in found)
    # The walk reaches every kind of element, and all of the contract.
    assert set(kinds) == {"service", "rpc", "message", "field", "oneof", "enum", "enum value"}
    assert {f.name for f in files.file} >= {"broker/v1/authorization_service.proto",
                                            "worker/v1/worker_service.proto"}
    assert kinds["service"] >= 7 and kinds["rpc"] >= 25 and kinds["field"] >= 150
    assert "broker.v1.AuthorizeRequest.amount" in {e.name for e in found}
    missing = [f"{e.file}: {e.kind} {e.name}" for e in gen.undocumented(files)]
    assert missing == [], "add a comment above each of these:\n" + "\n".join(missing)


def test_the_check_finds_each_kind_of_missing_comment(tmp_path):
    (tmp_path / "sample" / "v1").mkdir(parents=True)
    (tmp_path / "sample" / "v1" / "sample.proto").write_text(SAMPLE)
    missing = {(e.kind, e.name) for e in gen.undocumented(gen.load(tmp_path))}
    assert missing == {
        ("rpc", "sample.v1.ThingService.Watch"),
        ("field", "sample.v1.GetRequest.id"),
        ("field", "sample.v1.GetRequest.inner"),
        ("field", "sample.v1.GetRequest.Inner.a"),
        ("enum", "sample.v1.GetRequest.Colour"),
        ("enum value", "sample.v1.GetRequest.Colour.COLOUR_RED"),
        ("message", "sample.v1.GetResponse"),
    }
