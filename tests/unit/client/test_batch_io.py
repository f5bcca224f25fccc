import json
import os

import pytest

from glimpse.client.batch_io import BatchItem, ResultsFile, discover_images, load_list, read_results


def line(image, question="q?", **extra):
    return json.dumps({"image": image, "question": question, **extra}) + "\n"


def test_discovery_is_sorted_by_extension_and_optionally_recursive(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.jpeg", "d.webp", "notes.txt", "e.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.png").write_bytes(b"x")
    assert [p.name for p in discover_images(tmp_path)] == ["a.jpg", "b.PNG", "c.jpeg", "d.webp"]
    assert [p.name for p in discover_images(tmp_path, recursive=True)][-1] == "f.png"
    assert all(p.is_absolute() for p in discover_images(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        discover_images(tmp_path / "a.jpg")


def test_lists_resolve_paths_relative_to_the_list_and_default_the_question(tmp_path):
    csv_file = tmp_path / "l.csv"
    csv_file.write_text("image,question\nimgs/a.png,What?\nimgs/b.png,\n")
    items = load_list(csv_file, default_question="Default?")
    assert items == [
        BatchItem(str(tmp_path / "imgs" / "a.png"), "What?"),
        BatchItem(str(tmp_path / "imgs" / "b.png"), "Default?"),
    ]
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text('{"image": "/abs/x.jpg", "question": "Q"}\n\n{"image": "y.jpg"}\n')
    assert [i.image for i in load_list(jsonl, default_question="D")] == [
        "/abs/x.jpg",
        str(tmp_path / "y.jpg"),
    ]
    with pytest.raises(ValueError, match="no question"):
        load_list(jsonl, default_question=None)
    with pytest.raises(ValueError, match="csv or .jsonl"):
        load_list(tmp_path / "l.txt", default_question="D")


def test_resume_skips_successes_only(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(
        line("/a", response="cat", status=200)
        + line("/b", error="503: busy", status=503)
        + line("/c", response="dog", status=200)
        + line("/c", "other question?", error="x", status=None)
    )
    state = read_results(out)
    assert state.done == {("/a", "q?"), ("/c", "q?")}
    assert (state.torn, state.failed_before, state.valid_bytes) == (False, 2, out.stat().st_size)


def test_missing_file_is_a_fresh_start(tmp_path):
    state = read_results(tmp_path / "none.jsonl")
    assert state.done == frozenset()
    assert state.valid_bytes == 0
    assert not state.torn


def test_torn_last_line_is_dropped_and_truncated_before_appending(tmp_path):
    out = tmp_path / "r.jsonl"
    good = line("/a", response="cat", status=200)
    torn = line("/b", response="do", status=200)[:25]  # interrupted mid-write: no newline
    out.write_text(good + torn)
    state = read_results(out)
    assert state.torn
    assert state.done == {("/a", "q?")}
    assert state.valid_bytes == len(good.encode())
    results = ResultsFile(out, state)
    results.append({"image": "/b", "question": "q?", "response": "dog", "status": 200})
    results.close()
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    assert all(json.loads(x) for x in lines)
    assert read_results(out).done == {("/a", "q?"), ("/b", "q?")}


def test_a_corrupt_middle_line_is_skipped_not_fatal(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(line("/a", response="x", status=200) + "{garbage\n" + line("/b", response="y", status=200))
    assert read_results(out).done == {("/a", "q?"), ("/b", "q?")}


def test_non_ascii_responses_survive(tmp_path):
    out = tmp_path / "r.jsonl"
    results = ResultsFile(out, read_results(out))
    results.append({"image": "/é.png", "question": "何?", "response": "猫", "status": 200})
    results.close()
    assert read_results(out).done == {("/é.png", "何?")}


def test_a_file_name_that_is_not_utf8_is_written_and_resumed(tmp_path):
    if os.fsencode("\udcff") != b"\xff":
        pytest.skip("needs a file system encoding that escapes undecodable bytes (Linux)")
    (tmp_path / os.fsdecode(b"\xff\xfe.png")).write_bytes(b"x")
    (image,) = discover_images(tmp_path)
    out = tmp_path / "r.jsonl"
    results = ResultsFile(out, read_results(out))
    results.append({"image": str(image), "question": "q?", "response": "cat", "status": 200})
    results.close()
    out.read_bytes().decode("utf-8")  # the results file itself stays valid UTF-8
    assert read_results(out).done == {(str(image), "q?")}


def test_excel_csv_with_a_bom_and_a_multi_line_question(tmp_path):
    csv_file = tmp_path / "l.csv"
    csv_file.write_bytes(b'\xef\xbb\xbfimage,question\r\na.png,"First line\r\nsecond line"\r\n')
    assert load_list(csv_file, default_question=None) == [
        BatchItem(str(tmp_path / "a.png"), "First line\nsecond line")
    ]
