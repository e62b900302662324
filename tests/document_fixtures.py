"""Inputs for the document tests: a code repository with everything `--dir` must leave out, and
PDFs with and without a text layer (the `turboctx` command itself: cli_runner.py)."""
from __future__ import annotations

import functools
from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject


# ---- PDFs ---------------------------------------------------------------------------------------
def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path: Path, pages: list[list[str]]) -> Path:
    """A PDF whose pages show these lines in Helvetica (a real text layer); a page of no lines
    has no text at all (as a scan without OCR)."""
    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                             NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica"),
                             NameObject("/Encoding"): NameObject("/WinAnsiEncoding")})
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        if lines:
            ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td",
                   *[f"({_pdf_string(line)}) Tj T*" for line in lines], "ET"]
            stream = DecodedStreamObject()
            stream.set_data("\n".join(ops).encode("latin-1"))
            page.replace_contents(stream)
    with open(path, "wb") as f:
        writer.write(f)
    return path


# ---- a repository ---------------------------------------------------------------------------------
def _module(name: str, functions: int) -> str:
    """Plausible Python source: a module of small functions, each different."""
    out = [f'"""The {name} module: functions of the inventory service."""', "from __future__ import annotations", ""]
    for i in range(functions):
        out += [f"def {name}_step_{i}(items: list[int], factor: int = {i + 2}) -> list[int]:",
                f'    """Scale every item by {i + 2} and keep those above {i * 7}."""',
                "    scaled = [x * factor for x in items]",
                f"    return [x for x in scaled if x > {i * 7}]", ""]
    return "\n".join(out)


def make_repository(root: Path) -> dict:
    """A repository of about 7K tokens of text, with files --dir must skip. Returns the files it
    must read (in prompt order, relative to root) and the entries it must skip {path: category}."""
    def write(relative: str, content: str | bytes) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    write("README.md", "# Inventory\n\nThe inventory service counts the lighthouse lamps.\n")
    write(".gitignore", "*.log\n!keep.log\nbuild/\n*.tmp\n")
    write("pyproject.toml", '[project]\nname = "inventory"\nversion = "0.1.0"\n')
    write("keep.log", "kept: the root .gitignore re-includes it\n")
    write("debug.log", "ignored: *.log\n")
    write("build/out.txt", "ignored: build/\n")
    write("docs/guide.md", "# Guide\n\nRun `inventory count` to count the lamps.\n")
    write("docs/latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"))
    write_pdf((root / "docs").joinpath("paper.pdf"), [["The lamp paper, page one."], ["Page two: 12 lamps."]])
    write_pdf(root / "docs" / "scan.pdf", [[]])
    write("src/app/__init__.py", '"""The inventory app."""\n')
    write("src/app/core.py", _module("core", 50))
    write("src/app/util.py", _module("util", 45))
    write("src/app/.gitignore", "!important.tmp\n")
    write("src/app/important.tmp", "re-included by src/app/.gitignore over the root's *.tmp\n")
    write("src/app/scratch.tmp", "ignored: *.tmp\n")
    write("src/app/generated/.gitignore", "*.gen.py\n")
    write("src/app/generated/table.gen.py", "TABLE = [1, 2, 3]\n")
    write("src/app/generated/schema.py", "SCHEMA = {'lamp': int}\n")
    write("src/app/__pycache__/core.cpython-311.pyc", b"\x00\x01compiled")
    write("tests/test_core.py", "from app.core import core_step_0\n\n\ndef test_step():\n"
                                "    assert core_step_0([5]) == [10]\n")
    write("assets/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    write("package-lock.json", '{"lockfileVersion": 3}\n')
    write("static/app.min.js", "function a(){return 1}\n")
    write("data/big.csv", "lamp,count\n" + "a,1\n" * (300 * 1024))       # 1.2 MiB
    write("node_modules/left-pad/index.js", "module.exports = 1\n")
    write(".git/HEAD", "ref: refs/heads/main\n")
    read = ["README.md", ".gitignore", "docs/guide.md", "docs/paper.pdf", "keep.log", "pyproject.toml",
            "src/app/.gitignore", "src/app/__init__.py", "src/app/core.py",
            "src/app/generated/.gitignore", "src/app/generated/schema.py", "src/app/important.tmp",
            "src/app/util.py", "tests/test_core.py"]
    skipped = {".git/": "version control", "node_modules/": "generated or vendored",
               "src/app/__pycache__/": "generated or vendored", "build/": "ignored by .gitignore",
               "debug.log": "ignored by .gitignore", "src/app/scratch.tmp": "ignored by .gitignore",
               "src/app/generated/table.gen.py": "ignored by .gitignore",
               "package-lock.json": "lock file", "static/app.min.js": "generated or vendored",
               "assets/logo.png": "binary", "docs/latin1.txt": "not UTF-8",
               "data/big.csv": "over 1 MiB", "docs/scan.pdf": "PDF without text"}
    return {"read": read, "skipped": skipped}


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """The default model's tokenizer (SmolLM2's), read from its GGUF: no weights."""
    from turboctx.weights import open_checkpoint
    return open_checkpoint(None).tokenizer
