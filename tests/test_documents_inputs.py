"""Reading documents: --dir's rules (.gitignore root and nested, binary, lock files, vendored
folders, size), its order, PDFs with and without text, stdin. No model, no tokenizer."""
from __future__ import annotations

import io

import pytest

from document_fixtures import make_repository, write_pdf
from turboctx.documents import DocumentError, read_directory, read_file, read_inputs
from turboctx.documents.summary import skipped_summary


def test_a_repository_reads_the_right_files_in_order(tmp_path):
    expected = make_repository(tmp_path / "repo")
    found = read_directory(tmp_path / "repo")
    root = (tmp_path / "repo").as_posix()
    assert [d.name for d in found.documents] == [f"{root}/{p}" for p in expected["read"]]
    assert {s.path: s.category for s in found.skipped} == {f"{root}/{p}": c for p, c in expected["skipped"].items()}
    pdf = next(d for d in found.documents if d.name.endswith("paper.pdf"))
    assert pdf.kind == "pdf" and pdf.text == "[page 1]\nThe lamp paper, page one.\n[page 2]\nPage two: 12 lamps.\n"
    by_path = {s.path.removeprefix(root + "/"): s for s in found.skipped}
    assert by_path["src/app/generated/table.gen.py"].detail == f"{root}/src/app/generated/.gitignore"
    assert by_path["src/app/scratch.tmp"].detail == f"{root}/.gitignore"
    assert skipped_summary(found.skipped) == (
        "skipped 9 files and 4 directories: 4 ignored by .gitignore, 3 generated or vendored, "
        "1 PDF without text, 1 binary, 1 lock file, 1 not UTF-8, 1 over 1 MiB, 1 version control")


def test_a_directory_given_as_dot_names_files_by_their_relative_path(tmp_path, monkeypatch):
    (tmp_path / "b.py").write_text("B = 2\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "z.py").write_text("Z = 1\n")
    (tmp_path / "readme.txt").write_text("read me first\n")
    monkeypatch.chdir(tmp_path)
    found = read_inputs(directories=["."])
    assert [d.name for d in found.documents] == ["readme.txt", "a/z.py", "b.py"]


def test_files_keep_their_order_before_directories_and_read_stdin(tmp_path):
    (tmp_path / "second.txt").write_text("two\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.md").write_text("# x\n")
    stdin = io.BytesIO("from a pipe\n".encode())
    found = read_inputs([str(tmp_path / "second.txt"), "-"], [tmp_path / "d"], stdin=stdin)
    assert [(d.name, d.kind) for d in found.documents] == [
        (str(tmp_path / "second.txt"), "text"), ("<stdin>", "stdin"), ((tmp_path / "d" / "x.md").as_posix(), "text")]
    assert found.documents[1].text == "from a pipe\n"


def test_three_pdfs_give_their_text_page_by_page(tmp_path):
    texts = {"a.pdf": [["Alpha (first) report."]], "b.pdf": [["Beta line one.", "Beta line two."], ["Beta 2"]],
             "c.pdf": [["Gamma: 3 lamps, 4 wicks."]]}
    for name, pages in texts.items():
        write_pdf(tmp_path / name, pages)
    docs = read_inputs([str(tmp_path / n) for n in texts]).documents
    assert [d.kind for d in docs] == ["pdf"] * 3
    for doc, pages in zip(docs, texts.values()):
        assert doc.text == "".join(f"[page {i + 1}]\n" + "\n".join(lines) + "\n" for i, lines in enumerate(pages))


@pytest.mark.parametrize("setup, words", [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes("caf\xe9\n".encode("latin-1")), "is not UTF-8 text (byte 0xe9 at offset 3"),
    (lambda p: p.write_bytes(b"ab\x00cd"), "NUL byte"),
    (lambda p: p.mkdir(), "is a directory; give it with --dir"),
])
def test_a_bad_file_is_named(tmp_path, setup, words):
    path = tmp_path / "doc.txt"
    setup(path)
    with pytest.raises(DocumentError) as e:
        read_file(str(path))
    assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_pdf_without_text_is_named(tmp_path):
    write_pdf(tmp_path / "scan.pdf", [[], []])
    with pytest.raises(DocumentError, match=r"PDF '.*scan\.pdf' has no text layer \(2 pages"):
        read_file(str(tmp_path / "scan.pdf"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(DocumentError, match=r"cannot read PDF '.*broken\.pdf'"):
        read_file(str(tmp_path / "broken.pdf"))


def test_empty_stdin_and_an_unreadable_directory_say_why(tmp_path):
    with pytest.raises(DocumentError, match="stdin is empty"):
        read_file("-", io.BytesIO(b" \n"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.out").write_bytes(b"\x7fELF\x00\x00")
    (tmp_path / "bin" / "b.so").write_bytes(b"\x00" * 10)
    (tmp_path / "bin" / "poetry.lock").write_text("[[package]]\n")
    with pytest.raises(DocumentError) as e:
        read_directory(tmp_path / "bin")
    assert str(e.value) == (f"nothing readable in directory {str(tmp_path / 'bin')!r}: "
                            "skipped 3 files: 2 binary, 1 lock file")
    (tmp_path / "none").mkdir()
    with pytest.raises(DocumentError, match="it holds no files"):
        read_directory(tmp_path / "none")
    with pytest.raises(DocumentError, match="does not exist"):
        read_directory(tmp_path / "missing")
