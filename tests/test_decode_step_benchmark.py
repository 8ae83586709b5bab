"""benchmarks/decode_step.py on the tiny random model, so the script cannot rot. Nothing here asserts a time."""


def test_decode_step_table_on_the_tiny_model(load_benchmark, tmp_path):
    decode_step = load_benchmark("decode_step")
    out = tmp_path / "decode.md"
    assert decode_step.main(["--model", "tiny-random", "--rows", "4,1", "--context", "8", "--repeats", "2",
                             "--out", str(out)]) == 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:2] == ["rows", "step ms"] and header[-1] == "step / max(floors)"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[0] for row in rows] == ["4", "1"]
    for row in rows:
        step, stream, compute = float(row[1]), float(row[4]), float(row[5])
        assert step > 0 and stream > 0 and compute > 0
        # tokens/s is the rows over the step; the ratio is the step over the larger floor (from the printed,
        # rounded milliseconds: a tiny model's floors are tenths of a millisecond)
        assert abs(float(row[3]) / (int(row[0]) / (step / 1e3)) - 1) < 0.05
        ratio = step / max(stream, compute)
        assert abs(float(row[6].rstrip("x")) / ratio - 1) < 0.25
    # the compute floor scales with the rows; the streaming floor does not
    assert float(rows[0][5]) > float(rows[1][5]) and rows[0][4] == rows[1][4]
    assert "command: python benchmarks/decode_step.py --model tiny-random" in out.read_text()
    assert decode_step.memory_bandwidth(1 << 20, repeats=2) > 0
