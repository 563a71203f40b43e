"""Responses as ``emu3p5.story.Story`` protobufs, and Stories as files (spec §8.2, §8.3).

``StoryBuilder`` fills a Story the way the reference ``ProtoWriter`` does; the caller decodes
image codes to pixels first (``services.model.response.render_images``), so protobuf stays
here. Differences from the reference, all for outputs it mishandles:

- ``BrokenImage`` and ``IncompleteImage`` entries have no place in a Story and are skipped;
  the caller reports them.
- ``build`` never adds a clip: the reference's save creates an empty ``clip_0000`` when a
  story has no clip at all (e.g. only a global CoT).
- ``story_to_files`` writes no empty ``.png`` for an image without data (a CoT placeholder
  that was followed by text instead of its image).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

from emu35_proto.story import interleave_story_pb2 as pb

from services.model.response import (
    BrokenImage,
    GlobalCot,
    ImageCot,
    ImageEntry,
    IncompleteImage,
    PngImage,
    TextEntry,
)

# A response entry after rendering: every ImageEntry replaced by its PngImage.
StoryItem = Union[TextEntry, GlobalCot, ImageCot, PngImage, BrokenImage, IncompleteImage]


class StoryBuilder:
    """Accumulates a question, reference images and response items into a Story (§8.2)."""

    def __init__(self, question: str = "") -> None:
        self._story = pb.Story(question=question)

    def add_reference_image(self, png: PngImage) -> None:
        """Append to ``Story.reference_images``."""
        self._story.reference_images.add().image.CopyFrom(_image_pb(png))

    def add(self, item: StoryItem) -> None:
        """Apply one response item (the §8.2 table)."""
        if isinstance(item, GlobalCot):
            self._story.summary = item.text  # the last one wins
        elif isinstance(item, TextEntry):
            self._new_clip(item.text)
        elif isinstance(item, ImageCot):
            self._last_images().add(chain_of_thought=item.text)
        elif isinstance(item, PngImage):
            self._add_image(item)
        elif isinstance(item, (BrokenImage, IncompleteImage)):
            pass  # no Story field; reported by the caller
        elif isinstance(item, ImageEntry):
            raise TypeError("StoryBuilder.add: render ImageEntry codes to a PngImage first")
        else:
            raise TypeError(f"StoryBuilder.add: unsupported item {type(item).__name__}")

    def build(self) -> pb.Story:
        """A copy of the Story so far, without a trailing CoT-only image placeholder."""
        story = pb.Story()
        story.CopyFrom(self._story)
        if story.clips:
            images = story.clips[-1].segments[0].images
            if images and not images[-1].image.image_data:
                del images[-1]
        return story

    def _new_clip(self, text: str) -> None:
        clip = self._story.clips.add(clip_id=f"clip_{len(self._story.clips):04d}")
        clip.segments.add(asr=text)

    def _last_images(self):
        """The last clip's ``segments[0].images`` (an empty clip is created if none exists)."""
        if not self._story.clips:
            self._new_clip("")
        return self._story.clips[-1].segments[0].images

    def _add_image(self, png: PngImage) -> None:
        images = self._last_images()
        # Fill the placeholder its CoT left, else start a new ImageMeta.
        meta = images[-1] if images and not images[-1].image.image_data else images.add()
        meta.image.CopyFrom(_image_pb(png))


def build_story(question: str, reference_pngs: Sequence[PngImage],
                items: Iterable[StoryItem]) -> pb.Story:
    """The Story of one response: ``items`` are split_response entries with every image
    rendered (``render_images``)."""
    builder = StoryBuilder(question)
    for png in reference_pngs:
        builder.add_reference_image(png)
    for item in items:
        builder.add(item)
    return builder.build()


def story_to_files(story: pb.Story, out_dir: str | Path) -> list[Path]:
    """Write the §8.3 files of ``story`` into ``out_dir`` (created); returns them in order.

    000_question.txt, 000_global_cot.txt (non-blank summary), {i:03d}_reference_image.png, then
    per segment, numbered from the number of reference images (1 if none):
    {idx:03d}_text.txt, {idx:03d}_{j:02d}_image.png, {idx:03d}_{j:02d}_image_cot.txt (non-blank
    CoT). Text files are UTF-8 and end with a newline. Images are written as stored (PNG for
    every story this server builds).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_write_text(out / "000_question.txt", story.question)]
    if story.summary.strip():
        written.append(_write_text(out / "000_global_cot.txt", story.summary))
    for i, ref in enumerate(story.reference_images):
        written.append(_write_bytes(out / f"{i:03d}_reference_image.png", ref.image.image_data))
    idx = len(story.reference_images) or 1
    for clip in story.clips:
        for segment in clip.segments:
            written.append(_write_text(out / f"{idx:03d}_text.txt", segment.asr))
            for j, meta in enumerate(segment.images):
                if meta.image.image_data:
                    written.append(_write_bytes(out / f"{idx:03d}_{j:02d}_image.png",
                                                meta.image.image_data))
                if meta.chain_of_thought.strip():
                    written.append(_write_text(out / f"{idx:03d}_{j:02d}_image_cot.txt",
                                               meta.chain_of_thought))
            idx += 1
    return written


def _image_pb(png: PngImage) -> pb.Image:
    return pb.Image(width=png.width, height=png.height, format=pb.PNG, image_data=png.data)


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8", newline="\n")
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
