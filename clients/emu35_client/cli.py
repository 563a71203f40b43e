"""The ``emu35-client`` command.

  emu35-client generate --target HOST[:PORT] --task T --prompt TEXT [--image PATH ...]
                        [--aspect A | --size S] [--seed N] [--cfg S] [--max-new-tokens N]
                        [--api-key K] [--timeout S] [--tls] --out DIR
  emu35-client health|info|models --target HOST[:PORT] [--api-key K] [--timeout S] [--tls]
  emu35-client --version | --help

``generate`` streams the answer text to stdout as it is written (reasoning channels such as
``global_cot`` go into the summary instead) and image progress (token rows) to stderr, saves
each image as OUT/NN.png (SHA-256 checked) and ends stdout with a one-line JSON summary.
``health`` prints JSON and exits 1 when not ready. Every error is one line on stderr,
``emu35-client: error: CODE: details``, with exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from . import __version__
from .channel import DEFAULT_PORT
from .client import Client
from .download import download
from .errors import Emu35Error, Internal, InvalidArgument
from .types import Finished, ImageProgress, ImageReady, ImageStarted, TextDelta

PROG = "emu35-client"
TASKS = ("t2i", "x2i", "howto", "story", "explore", "vla")
DOWNLOAD_TIMEOUT = 60.0


class ProgressBar:
    """One stderr line per image, redrawn in place: ``image 0 [#####.....] 12/32 rows``."""

    WIDTH = 30

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._mid_line = False

    def draw(self, index: int, done: int, total: int, tail: str = "") -> None:
        filled = self.WIDTH * done // total if total > 0 else 0
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\rimage {index} [{bar}] {done}/{total} rows{tail}")
        self._stream.flush()
        self._mid_line = not tail.endswith("\n")

    def end_line(self) -> None:
        """Leave the cursor at the start of a line (before an error message, say)."""
        if self._mid_line:
            self._stream.write("\n")
            self._mid_line = False


class _Generation:
    """Prints and saves the events of one stream; ``summary()`` is the closing JSON."""

    def __init__(self, out_dir: Path, stdout: TextIO, stderr: TextIO, download_timeout: float):
        self.out_dir, self.stdout, self.download_timeout = out_dir, stdout, download_timeout
        self.bar = ProgressBar(stderr)
        self.rows: dict[int, int] = {}
        self.images: list[dict] = []
        self.channels: dict[str, str] = {}  # text of the reasoning channels (not "text")
        self.finished: Finished | None = None
        self.text_ends_line = True

    def on_event(self, event) -> None:
        if isinstance(event, TextDelta) and event.channel != "text":
            self.channels[event.channel] = self.channels.get(event.channel, "") + event.text
        elif isinstance(event, TextDelta) and event.text:
            self.stdout.write(event.text)
            self.stdout.flush()
            self.text_ends_line = event.text.endswith("\n")
        elif isinstance(event, ImageStarted):
            self.rows[event.index] = event.h
            self.bar.draw(event.index, 0, event.h)
        elif isinstance(event, ImageProgress):
            self.bar.draw(event.index, event.rows_done, event.rows_total)
        elif isinstance(event, ImageReady):
            self._save(event)
        elif isinstance(event, Finished):
            self.finished = event

    def _save(self, event: ImageReady) -> None:
        path = download(event.ref, self.out_dir / f"{event.index:02d}.png",
                        timeout=self.download_timeout)
        rows = self.rows.get(event.index, 0)
        self.bar.draw(event.index, rows, rows, f" -> {path}\n")
        ref = event.ref
        self.images.append({"index": event.index, "path": str(path), "uri": ref.uri,
                            "sha256": ref.sha256, "bytes": ref.bytes, "width": ref.width,
                            "height": ref.height})

    def summary(self, request_id: str) -> dict:
        f = self.finished
        if f is None:
            raise Internal("the stream ended without a Finished event")
        return {"request_id": request_id, "reason": f.reason, "seed": f.seed,
                "incomplete_image": f.incomplete_image, "usage": asdict(f.usage),
                "images": self.images, "channels": self.channels,
                "story": f.story.uri if f.story else None,
                "manifest": f.manifest.uri if f.manifest else None}


def _client(args) -> Client:
    return Client(args.target, api_key=args.api_key or None, tls=args.tls,
                  default_timeout=args.timeout)


def _cmd_generate(args, stdout: TextIO, stderr: TextIO) -> int:
    out_dir = Path(args.out)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgument(f"--out: cannot create {out_dir}: {e.strerror or e}") from None
    try:
        return _generate(args, out_dir, stdout, stderr)
    except BaseException:
        if created:  # a failed call leaves no empty folder behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _generate(args, out_dir: Path, stdout: TextIO, stderr: TextIO) -> int:
    gen = _Generation(out_dir, stdout, stderr, args.timeout or DOWNLOAD_TIMEOUT)
    with _client(args) as client:
        stream = client.generate(args.task, args.prompt, images=args.image,
                                 size=args.aspect or args.size, seed=args.seed, cfg=args.cfg,
                                 max_new_tokens=args.max_new_tokens)
        try:
            with stream:
                for event in stream:
                    gen.on_event(event)
        finally:  # whatever happened, the next line starts clean on both streams
            gen.bar.end_line()
            if not gen.text_ends_line:
                stdout.write("\n")
    stdout.write(json.dumps(gen.summary(stream.request_id)) + "\n")
    return 0


def _cmd_health(args, stdout: TextIO, stderr: TextIO) -> int:
    with _client(args) as client:
        health = client.health()
    load = asdict(health.load) if health.load is not None else None
    stdout.write(json.dumps({"ready": health.ready, "stages": dict(health.stages),
                             "load": load}) + "\n")
    return 0 if health.ready else 1


def _cmd_info(args, stdout: TextIO, stderr: TextIO) -> int:
    with _client(args) as client:
        stdout.write(json.dumps(asdict(client.info())) + "\n")
    return 0


def _cmd_models(args, stdout: TextIO, stderr: TextIO) -> int:
    with _client(args) as client:
        stdout.write(json.dumps([asdict(m) for m in client.list_models()]) + "\n")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line format as server errors."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: INVALID_ARGUMENT: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; a default that a help text does not state
    already is shown after it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, [], argparse.SUPPRESS):
            text += f" (default: {action.default})"
        return text


EXAMPLES = f"""examples:
  {PROG} health --target 127.0.0.1:9000
  {PROG} generate --target 127.0.0.1 --task t2i --prompt "a red fox" --aspect 16:9 --out fox
  {PROG} generate --target gpu-host:9000 --task x2i --prompt "make it night" \\
      --image day.png --seed 7 --out night

A --target without a port uses {DEFAULT_PORT}, the port `emu35 serve` listens on by default.
Errors are one line on stderr, "{PROG}: error: CODE: details", with exit status 2."""

GENERATE_HELP = """Generate text and images. The answer text streams to stdout, a progress bar per
image (token rows) to stderr; each image is saved as OUT/NN.png (SHA-256 checked); stdout ends
with a one-line JSON summary (request_id, reason, seed, usage, images, channels, story,
manifest)."""

# Public field (or client argument) named by an error -> the flag a CLI user typed.
_FLAGS = (("guidance.scale", "--cfg"), ("cfg.scale", "--cfg"), ("cfg", "--cfg"),
          ("max_new_tokens", "--max-new-tokens"), ("images[", "--image"), ("images", "--image"),
          ("prompt", "--prompt"), ("task", "--task"), ("seed", "--seed"),
          ("target", "--target"), ("timeout", "--timeout"), ("default_timeout", "--timeout"),
          ("api_key", "--api-key"))


def _connection_options() -> argparse.ArgumentParser:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--target", required=True, metavar="HOST[:PORT]",
                      help=f"the server's gRPC address (port {DEFAULT_PORT} when left out)")
    conn.add_argument("--api-key", default=os.environ.get("EMU35_API_KEY"),
                      help="API key sent as 'authorization: Bearer KEY' (default: "
                           "$EMU35_API_KEY; the server does not check keys yet)")
    conn.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="deadline of the call (and of each image download); none if unset")
    conn.add_argument("--tls", action="store_true", help="TLS with the system's root CAs")
    return conn


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, formatter_class=_Formatter, epilog=EXAMPLES,
                     description="Client for the emu35-serve gRPC API (emu35.v1.Emu35).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    conn = _connection_options()
    gen = sub.add_parser("generate", parents=[conn], formatter_class=_Formatter,
                         help="generate text and images", description=GENERATE_HELP,
                         epilog=EXAMPLES)
    gen.add_argument("--task", required=True, choices=TASKS, metavar="TASK",
                     help="one of " + ", ".join(TASKS))
    gen.add_argument("--prompt", required=True, help="the request text (required)")
    gen.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="a reference image, PNG/JPEG/WEBP/BMP (repeat for several; x2i needs "
                          "1-3, the other tasks take 0-3)")
    size = gen.add_mutually_exclusive_group()
    size.add_argument("--aspect", help="auto or a preset: 1:1, 4:3 (= default), 16:9, 21:9, 3:2, "
                                       "3:4, 9:16, 2:3 (default: the task's rule)")
    size.add_argument("--size", help="h*w tokens or HxW pixels, multiples of 16 (default: the "
                                     "task's rule)")
    gen.add_argument("--seed", type=int, help="sampling seed (default: drawn by the server and "
                                              "reported in the summary)")
    gen.add_argument("--cfg", type=float, metavar="SCALE",
                     help="classifier-free guidance scale (default: the task's, t2i 5, others 3)")
    gen.add_argument("--max-new-tokens", type=int, metavar="N",
                     help="token budget (default: the task's, within the model context)")
    gen.add_argument("--out", required=True, metavar="DIR",
                     help="folder for the images (NN.png); created if missing")
    gen.set_defaults(func=_cmd_generate)
    for name, func, text in (("health", _cmd_health, "readiness of the gateway and stages "
                                                     "(JSON; exit 1 when not ready)"),
                             ("info", _cmd_info, "version, tasks and request limits (JSON)"),
                             ("models", _cmd_models, "the served models (JSON)")):
        sub.add_parser(name, parents=[conn], help=text, description=text,
                       formatter_class=_Formatter).set_defaults(func=func)
    return parser


def _with_flag(error: Emu35Error) -> Emu35Error:
    """A message naming a request field names the CLI flag instead (``--cfg: ...``)."""
    details = error.details
    for field, flag in _FLAGS:
        if details.startswith(field):
            rest = details[len(field):]
            if field.endswith("["):  # images[1]: ... -> --image #2: ...
                index, _, rest = rest.partition("]")
                if index.isdigit():
                    rest = f" #{int(index) + 1}{rest}"
            if rest[:1] in (":", " "):
                error.details = f"{flag}{rest}"
            break
    else:
        if details.startswith("size"):
            error.details = "--size/--aspect" + details[len("size"):]
    return error


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no command: the usage, not an error from a server
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args, sys.stdout, sys.stderr)
    except Emu35Error as e:
        sys.stderr.write(f"{PROG}: error: {_with_flag(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG}: error: CANCELLED: interrupted\n")
        return 130
    except BrokenPipeError:  # stdout closed early (piped into `head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
