"""docs/api.md is generated from the proto comments (scripts/gen_api_docs.py) and is up
to date with protos/; the renderer shows every element and keeps comment text literal."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts/gen_api_docs.py")
gen = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

SAMPLE = '''syntax = "proto3";

package sample.v1;

import "google/protobuf/timestamp.proto";

// Things.
service ThingService {
  // Streams changes.
  rpc Watch(stream WatchRequest) returns (stream Thing);
}

// Request for Watch.
message WatchRequest {
  // Labels to match.
  map<string, int64> labels = 1;
  // Since when.
  google.protobuf.Timestamp since = 2;
}

// A thing. charge = ceil(a * b / 1000)
// + c * d, sent as "Bearer <key>" | piped.
//
// Second paragraph with `a * b`.
message Thing {
  // Its parts.
  repeated Part parts = 1;
  // What it is.
  oneof kind {
    // A word.
    string word = 2;
    // A colour.
    Colour colour = 3;
  }
  // One part.
  message Part {
    // Its size.
    int32 size = 1;
  }
  // Colours.
  enum Colour {
    // Not set.
    COLOUR_UNSPECIFIED = 0;
    // Red.
    COLOUR_RED = 1;
  }
}
'''


def test_api_md_is_up_to_date():
    fresh = gen.render(gen.load())
    assert (ROOT / "docs/api.md").read_text() == fresh, "docs/api.md is stale: run make api-docs"


def test_api_md_shows_every_element_with_its_comment():
    files = gen.load()
    text = gen.render(files)
    for element in gen.elements(files):
        short = element.name.rsplit(".", 1)[1]
        if element.kind in ("service", "message", "enum"):
            assert f'<a name="{element.name}"></a>' in text, element.name
        elif element.kind in ("rpc", "field", "enum value"):
            assert f"| `{short}` |" in text, element.name
        assert gen.cell(element.comment) in text, element.name


def test_rendering_of_streams_maps_nesting_oneofs_and_literal_text(tmp_path):
    (tmp_path / "sample" / "v1").mkdir(parents=True)
    (tmp_path / "sample" / "v1" / "sample.proto").write_text(SAMPLE)
    text = gen.render(gen.load(tmp_path))
    assert ("| `Watch` | stream [WatchRequest](#sample.v1.WatchRequest) | "
            "stream [Thing](#sample.v1.Thing) | Streams changes. |") in text
    assert "| `labels` | 1 | map&lt;string, int64&gt; | Labels to match. |" in text
    assert "| `since` | 2 | `google.protobuf.Timestamp` | Since when. |" in text
    assert "| `parts` | 1 | repeated [Thing.Part](#sample.v1.Thing.Part) | Its parts. |" in text
    assert "| `colour` | 3 | [Thing.Colour](#sample.v1.Thing.Colour) | A colour. |" in text
    assert "One of `kind` (`word`, `colour`): What it is." in text
    assert '#### <a name="sample.v1.Thing.Part"></a>Thing.Part\n' in text
    assert '#### <a name="sample.v1.Thing.Colour"></a>Thing.Colour (enum)\n' in text
    assert "| `COLOUR_RED` | 1 | Red. |" in text
    # Wrapped lines join (no "+ ..." list item); *, <, > and | show literally; two paragraphs.
    assert ('A thing. charge = ceil(a \\* b / 1000) + c \\* d, sent as "Bearer &lt;key&gt;" '
            '\\| piped.\n\nSecond paragraph with `a * b`.\n') in text
    assert "LabelsEntry" not in text  # the synthesized map entry is not a message of its own
