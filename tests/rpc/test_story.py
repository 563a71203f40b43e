"""Story protobuf: schema (spec §8.1), response -> Story mapping (§8.2), files (§8.3)."""
from __future__ import annotations

import io

import pytest
import torch
from emu35_proto.story import interleave_story_pb2 as pb
from google.protobuf import descriptor_pb2
from PIL import Image

from services.model.image_tokens import image_span_ids
from services.model.response import (
    BrokenImage,
    GlobalCot,
    ImageCot,
    ImageEntry,
    IncompleteImage,
    PngImage,
    TextEntry,
    render_images,
    split_response,
)
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer
from services.rpc.story import StoryBuilder, build_story, story_to_files

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED


def _png(width: int, height: int, color: str = "red") -> PngImage:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return PngImage(buf.getvalue())


RED, GREEN, BLUE = _png(32, 16, "red"), _png(16, 48, "green"), _png(16, 16, "blue")


# --- schema (§8.1) ----------------------------------------------------------------------

# message -> {field: (number, type, label, type_name)}; type_name for message/enum fields.
SCHEMA = {
    "TimeStamp": {"start": (1, F.TYPE_DOUBLE, OPT, ""), "end": (2, F.TYPE_DOUBLE, OPT, "")},
    "Image": {
        "width": (1, F.TYPE_INT32, OPT, ""), "height": (2, F.TYPE_INT32, OPT, ""),
        "format": (3, F.TYPE_ENUM, OPT, ".emu3p5.story.ImageFormat"),
        "image_data": (4, F.TYPE_BYTES, OPT, ""), "image_path": (5, F.TYPE_STRING, OPT, ""),
    },
    "ImageMeta": {
        "image_id": (1, F.TYPE_STRING, OPT, ""),
        "timestamp": (2, F.TYPE_MESSAGE, OPT, ".emu3p5.story.TimeStamp"),
        "caption": (3, F.TYPE_STRING, OPT, ""), "detail_caption": (4, F.TYPE_STRING, OPT, ""),
        "features": (5, F.TYPE_MESSAGE, REP, ".emu3p5.story.ImageMeta.FeaturesEntry"),
        "scores": (6, F.TYPE_MESSAGE, REP, ".emu3p5.story.ImageMeta.ScoresEntry"),
        "chain_of_thought": (7, F.TYPE_STRING, OPT, ""),
        "cot_translate": (8, F.TYPE_STRING, OPT, ""),
        "image": (11, F.TYPE_MESSAGE, OPT, ".emu3p5.story.Image"),
        "is_keyframe_status": (12, F.TYPE_SINT32, OPT, ""),
    },
    "Segment": {
        "timestamp": (1, F.TYPE_MESSAGE, OPT, ".emu3p5.story.TimeStamp"),
        "asr": (2, F.TYPE_STRING, OPT, ""), "caption": (3, F.TYPE_STRING, OPT, ""),
        "asr_translate": (4, F.TYPE_STRING, OPT, ""),
        "images": (101, F.TYPE_MESSAGE, REP, ".emu3p5.story.ImageMeta"),
    },
    "Clip": {
        "clip_id": (1, F.TYPE_STRING, OPT, ""),
        "timestamp": (2, F.TYPE_MESSAGE, OPT, ".emu3p5.story.TimeStamp"),
        "story": (11, F.TYPE_STRING, OPT, ""), "caption": (21, F.TYPE_STRING, OPT, ""),
        "segments": (101, F.TYPE_MESSAGE, REP, ".emu3p5.story.Segment"),
    },
    "Story": {
        "story_id": (1, F.TYPE_STRING, OPT, ""),
        "clips": (2, F.TYPE_MESSAGE, REP, ".emu3p5.story.Clip"),
        "deprecated": (3, F.TYPE_BOOL, OPT, ""), "deprecate_reason": (4, F.TYPE_STRING, OPT, ""),
        "summary": (11, F.TYPE_STRING, OPT, ""), "question": (12, F.TYPE_STRING, OPT, ""),
        "refined_summary": (13, F.TYPE_STRING, OPT, ""),
        "question_translate": (14, F.TYPE_STRING, OPT, ""),
        "summary_translate": (15, F.TYPE_STRING, OPT, ""),
        "refined_summary_translate": (16, F.TYPE_STRING, OPT, ""),
        "reference_images": (17, F.TYPE_MESSAGE, REP, ".emu3p5.story.ImageMeta"),
    },
}
MAP_ENTRIES = {"FeaturesEntry": F.TYPE_BYTES, "ScoresEntry": F.TYPE_DOUBLE}


@pytest.fixture(scope="module")
def file_proto() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)


def _fields(message: descriptor_pb2.DescriptorProto) -> dict:
    return {f.name: (f.number, f.type, f.label, f.type_name) for f in message.field}


def test_package_and_syntax(file_proto):
    assert file_proto.package == "emu3p5.story" and file_proto.syntax == "proto3"
    assert pb.Story.DESCRIPTOR.full_name == "emu3p5.story.Story"


@pytest.mark.parametrize("name", sorted(SCHEMA))
def test_message_fields(file_proto, name):
    (message,) = [m for m in file_proto.message_type if m.name == name]
    assert _fields(message) == SCHEMA[name]
    assert not any(f.HasField("proto3_optional") for f in message.field)


def test_exactly_the_spec_messages(file_proto):
    assert sorted(m.name for m in file_proto.message_type) == sorted(SCHEMA)


@pytest.mark.parametrize("entry,value_type", sorted(MAP_ENTRIES.items()))
def test_map_fields(file_proto, entry, value_type):
    (meta,) = [m for m in file_proto.message_type if m.name == "ImageMeta"]
    (nested,) = [m for m in meta.nested_type if m.name == entry]
    assert nested.options.map_entry
    assert _fields(nested) == {"key": (1, F.TYPE_STRING, OPT, ""), "value": (2, value_type, OPT, "")}


def test_image_format_enum(file_proto):
    (enum,) = file_proto.enum_type
    assert enum.name == "ImageFormat"
    assert [(v.name, v.number) for v in enum.value] == [
        ("UNKNOWN", 0), ("JPEG", 1), ("PNG", 2), ("WEBP", 3), ("BMP", 4)]


def test_wire_bytes_of_known_fields():
    """Tags on the wire: field number << 3 | wire type, as varints."""
    assert pb.Clip(clip_id="c").SerializeToString() == b"\x0a\x01c"
    assert pb.Segment(images=[pb.ImageMeta()]).SerializeToString() == b"\xaa\x06\x00"  # 101
    assert pb.Clip(segments=[pb.Segment()]).SerializeToString() == b"\xaa\x06\x00"
    assert pb.Story(question="q").SerializeToString() == b"\x62\x01q"  # 12
    assert pb.Story(reference_images=[pb.ImageMeta()]).SerializeToString() == b"\x8a\x01\x00"
    assert pb.ImageMeta(image=pb.Image(format=pb.PNG)).SerializeToString() == b"\x5a\x02\x18\x02"
    assert pb.ImageMeta(is_keyframe_status=-1).SerializeToString() == b"\x60\x01"  # zigzag


# --- mapping (§8.2), row by row -----------------------------------------------------------

def _images(story: pb.Story, clip: int = -1) -> list[tuple[str, int, int, bytes]]:
    return [(m.chain_of_thought, m.image.width, m.image.height, m.image.image_data)
            for m in story.clips[clip].segments[0].images]


def test_question_and_reference_images():
    story = build_story("a fox?", [RED, GREEN], [])
    assert story.question == "a fox?"
    refs = [(m.image.width, m.image.height, m.image.format, m.image.image_data)
            for m in story.reference_images]
    assert refs == [(32, 16, pb.PNG, RED.data), (16, 48, pb.PNG, GREEN.data)]
    assert not story.clips  # the reference's save would add an empty clip_0000 here


def test_global_cot_goes_to_summary_and_the_last_wins():
    story = build_story("", [], [GlobalCot("first"), TextEntry("t"), GlobalCot("second")])
    assert story.summary == "second"


def test_each_text_is_a_new_clip_with_one_segment():
    story = build_story("", [], [TextEntry("one"), TextEntry("two"), TextEntry("three")])
    assert [c.clip_id for c in story.clips] == ["clip_0000", "clip_0001", "clip_0002"]
    assert [[s.asr for s in c.segments] for c in story.clips] == [["one"], ["two"], ["three"]]


def test_image_cot_then_image_fill_one_image_meta():
    story = build_story("", [], [TextEntry("t"), ImageCot("think"), RED])
    assert _images(story) == [("think", 32, 16, RED.data)]
    assert story.clips[0].segments[0].images[0].image.format == pb.PNG


def test_image_without_cot_appends_a_new_image_meta():
    story = build_story("", [], [TextEntry("t"), RED, GREEN, ImageCot("c"), BLUE])
    assert _images(story) == [("", 32, 16, RED.data), ("", 16, 48, GREEN.data),
                              ("c", 16, 16, BLUE.data)]


def test_images_go_to_the_last_clip():
    story = build_story("", [], [TextEntry("a"), RED, TextEntry("b"), ImageCot("c"), GREEN])
    assert _images(story, 0) == [("", 32, 16, RED.data)]
    assert _images(story, 1) == [("c", 16, 48, GREEN.data)]


@pytest.mark.parametrize("first", [ImageCot("c"), RED])
def test_an_empty_clip_is_created_when_an_image_comes_first(first):
    story = build_story("", [], [first, GREEN, TextEntry("t")])
    assert [(c.clip_id, c.segments[0].asr) for c in story.clips] == [("clip_0000", ""),
                                                                     ("clip_0001", "t")]
    assert [m.image.image_data for m in story.clips[0].segments[0].images][-1] == GREEN.data


def test_trailing_cot_only_placeholder_is_dropped_on_build():
    story = build_story("", [], [TextEntry("t"), RED, ImageCot("never drawn")])
    assert _images(story) == [("", 32, 16, RED.data)]


def test_only_the_trailing_placeholder_is_dropped():
    items = [TextEntry("a"), ImageCot("c1"), ImageCot("c2"), TextEntry("b"), ImageCot("c3")]
    story = build_story("", [], items)
    assert _images(story, 0) == [("c1", 0, 0, b""), ("c2", 0, 0, b"")]
    assert _images(story, 1) == []


def test_a_second_cot_leaves_the_first_placeholder_empty():
    story = build_story("", [], [TextEntry("a"), ImageCot("c1"), ImageCot("c2"), RED])
    assert _images(story) == [("c1", 0, 0, b""), ("c2", 32, 16, RED.data)]


def test_build_does_not_consume_the_builder():
    builder = StoryBuilder("q")
    builder.add(TextEntry("t"))
    builder.add(ImageCot("c"))
    assert _images(builder.build()) == []
    builder.add(RED)  # still fills the placeholder build() left out
    assert _images(builder.build()) == [("c", 32, 16, RED.data)]


def test_broken_and_incomplete_images_are_not_in_the_story():
    story = build_story("", [], [TextEntry("t"), BrokenImage("ragged"), IncompleteImage(5)])
    assert _images(story) == [] and len(story.clips) == 1


def test_unrendered_images_and_unknown_items_are_rejected():
    builder = StoryBuilder()
    with pytest.raises(TypeError, match="PngImage"):
        builder.add(ImageEntry(torch.zeros(1, 1, dtype=torch.long)))
    with pytest.raises(TypeError, match="str"):
        builder.add("text")  # type: ignore[arg-type]


def test_serialised_story_parses_back():
    story = build_story("q", [RED], [GlobalCot("g"), TextEntry("t"), ImageCot("c"), GREEN])
    data = story.SerializeToString()
    again = pb.Story.FromString(data)
    assert again == story and again.SerializeToString() == data
    assert again.clips[0].segments[0].images[0].image.image_data == GREEN.data


def test_from_generated_ids_to_story(tmp_path):
    write_synthetic_tokenizer(tmp_path, num_visual_tokens=64)
    tok = TextTokenizer.from_dir(tmp_path)
    sp, t = tok.special, tok.encode_text
    codes = torch.arange(6).view(2, 3)
    ids = ([sp.bog] + t("plan") + [sp.eog] + t("A cat.") + [sp.boc] + t("cat") + [sp.eoc]
           + image_span_ids(tok, codes) + [sp.ess, sp.eos])
    items = render_images(split_response(tok, ids), lambda c: _png(16 * c.shape[1], 16 * c.shape[0]))
    story = build_story("a cat", [], items)
    assert (story.summary, story.clips[0].segments[0].asr) == ("plan", "A cat.")
    assert [(cot, w, h) for cot, w, h, _ in _images(story)] == [("cat", 48, 32)]


# --- files (§8.3) -------------------------------------------------------------------------

def _listing(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_files_with_reference_images(tmp_path):
    items = [GlobalCot("plan"), TextEntry("first"), ImageCot("cot a"), RED, GREEN,
             TextEntry("second"), ImageCot("   "), BLUE]
    story = build_story("question?", [GREEN, BLUE], items)
    written = story_to_files(story, tmp_path / "out")
    files = _listing(tmp_path / "out")
    assert files == {
        "000_question.txt": b"question?\n",
        "000_global_cot.txt": b"plan\n",
        "000_reference_image.png": GREEN.data,
        "001_reference_image.png": BLUE.data,
        "002_text.txt": b"first\n",  # idx starts at the number of reference images
        "002_00_image.png": RED.data,
        "002_00_image_cot.txt": b"cot a\n",
        "002_01_image.png": GREEN.data,
        "003_text.txt": b"second\n",
        "003_00_image.png": BLUE.data,  # a blank CoT writes no file
    }
    assert sorted(p.name for p in written) == sorted(files)


def test_files_without_reference_images(tmp_path):
    story = build_story("", [], [GlobalCot("  \n"), TextEntry("héllo\nworld"), RED])
    story_to_files(story, tmp_path)
    assert _listing(tmp_path) == {
        "000_question.txt": b"\n",
        "001_text.txt": "héllo\nworld\n".encode(),  # idx starts at 1; blank summary: no file
        "001_00_image.png": RED.data,
    }


def test_placeholder_without_image_writes_its_cot_but_no_png(tmp_path):
    story = build_story("q", [], [TextEntry("a"), ImageCot("cot"), TextEntry("b")])
    story_to_files(story, tmp_path)
    assert sorted(_listing(tmp_path)) == ["000_question.txt", "001_00_image_cot.txt",
                                         "001_text.txt", "002_text.txt"]
