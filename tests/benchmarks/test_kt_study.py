"""benchmarks/kt_study.py: the smoke study runs every row and cell through the real CLI, a rerun skips finished
cells, `--only` reruns one row's missing cells, and the real mode stops with one line where the teacher keys are
missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "kt_study.py"
sys.path.insert(0, str(SCRIPT.parent))  # the study's modules, imported by the tests below
ROWS = ("teacher", "random", "bare", "pkt-fmt", "pkt-fmt-at", "jkt", "akt", "pkt-clean", "bare-adamw", "pkt-adamw",
        "pkt-fmt-adamw", "jkt-adamw", "akt-adamw", "pkt-adamw-h4", "pkt-adamw-cls", "bare-adamw-s1", "pkt-adamw-s1",
        "bare-adamw-s2", "pkt-adamw-s2", "bare-adamw-s3", "pkt-adamw-s3", "pkt-adamw-cls-s1", "pkt-adamw-cls-h4",
        "pkt-adamw-cls-h4-s1", "jkt-adamw-s1", "akt-adamw-s1", "pkt-fmt-adamw-s1", "jkt-adamw-s2", "akt-adamw-s2",
        "jkt-adamw-s3", "akt-adamw-s3")
TASKS = ("sst-2", "mrpc", "sts-b", "rte")


def study(*args, threads: int | None = None):
    """Run the study script; `threads` sets OMP_NUM_THREADS, 0 unsets it."""
    env = None if threads is None else {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_dir):
    state = tmp_path_factory.mktemp("kt-study")
    proc = study("--smoke", "--state", state)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return state, proc


def test_smoke_runs_every_cell(smoke):
    state, proc = smoke
    cells = json.loads((state / "results.json").read_text())["cells"]
    want = {"data", "bench", "pretrain/teacher", "pretrain/random", *(f"pretrain/{r}" for r in ROWS[2:]),
            *(f"zeroshot/{r}" for r in ROWS), *(f"finetune/{r}/{t}/1" for r in ROWS for t in TASKS)}
    assert set(cells) == want
    for key, rec in cells.items():
        assert rec["wall_s"] >= 0 and rec["env"]["torch"] and rec["env"]["cores"] >= 1, key
        assert rec["env"]["isa"] and "isa_caps" in rec["env"], key  # the CPU kernels, on which CPU sums depend
    env = cells["pretrain/bare"]["env"]
    assert f" thread{'s' * (env['threads'] != 1)}, {env['isa']}" in (state / "kt-study.md").read_text()
    assert -1 <= cells["zeroshot/pkt-fmt-at"]["spearman"] <= 1 and cells["zeroshot/teacher"]["params"] > 0
    assert {cells[f"finetune/bare/{t}/1"]["metric"] for t in TASKS} == {"accuracy", "f1", "spearmanr"}
    # equal compute: every pre-trained row ran the same number of steps at the same batch and length
    runs = [cells[f"pretrain/{r}"] for r in ROWS[2:]]
    assert len({(r["steps"], r["batch"], r["seq"]) for r in runs}) == 1
    stages = {r: [s["stage"] for s in cells[f"pretrain/{r}"]["stages"]] for r in ROWS[2:]}
    assert stages["bare"] == ["bare"] and stages["akt"] == ["akt"] and stages["jkt"] == ["jkt", "pd"]
    assert stages["pkt-fmt-at"][-1] == "pd" and stages["pkt-fmt-at"][0] == "pkt-1"
    assert stages["pkt-clean"] == stages["pkt-fmt-at"]  # the same run but for the transfer input
    assert "input: clean" in (state / "pretrain" / "pkt-clean" / "settings.yaml").read_text()
    assert "input: masked" in (state / "pretrain" / "pkt-fmt-at" / "settings.yaml").read_text()
    assert stages["pkt-adamw"] == stages["pkt-fmt-at"] and stages["bare-adamw"] == ["bare"]
    assert stages["pkt-fmt-adamw"] == stages["pkt-fmt-at"] and stages["jkt-adamw"] == ["jkt", "pd"]
    assert stages["akt-adamw"] == ["akt"] and stages["pkt-adamw-h4"] == stages["pkt-fmt-at"]
    # the 4-head row (2 heads in smoke, against the debug teacher's 4): its student, and only its, has fewer heads
    heads = {r: json.loads((state / "pretrain" / r / "student" / "config.json").read_text())["num_attention_heads"]
             for r in ("pkt-adamw", "pkt-adamw-h4", "pkt-adamw-cls-h4", "pkt-adamw-cls-h4-s1")}
    assert heads == {"pkt-adamw": 4, "pkt-adamw-h4": 2, "pkt-adamw-cls-h4": 2, "pkt-adamw-cls-h4-s1": 2}
    cls = {r: yaml.safe_load((state / "pretrain" / r / "settings.yaml").read_text())["kt"]["cls_weight"]
           for r in ("pkt-adamw", "pkt-adamw-cls", "pkt-adamw-cls-h4", "pkt-adamw-cls-h4-s1")}
    assert cls == {"pkt-adamw": 1.0, "pkt-adamw-cls": 127.0, "pkt-adamw-cls-h4": 127.0, "pkt-adamw-cls-h4-s1": 127.0}
    assert stages["pkt-adamw-cls"] == stages["pkt-fmt-at"]
    cls_s1 = yaml.safe_load((state / "pretrain" / "pkt-adamw-cls-s1" / "settings.yaml").read_text())
    assert (cls_s1["kt"]["cls_weight"], cls_s1["run"]["seed"]) == (127.0, 1)
    settings_of = {}  # row -> its settings.yaml, read once
    for row, stages_with_adamw in (("pkt-adamw", ("kt", "pd")), ("bare-adamw", ("kt",)), ("jkt-adamw", ("kt", "pd")),
                                   ("pkt-fmt-adamw", ("kt", "pd")), ("akt-adamw", ("kt",)),
                                   ("pkt-adamw-h4", ("kt", "pd")), ("pkt-adamw-cls", ("kt", "pd")),
                                   ("pkt-adamw-cls-s1", ("kt", "pd")), ("pkt-adamw-cls-h4", ("kt", "pd")),
                                   ("pkt-adamw-cls-h4-s1", ("kt", "pd")), ("jkt-adamw-s1", ("kt", "pd")),
                                   ("akt-adamw-s1", ("kt",)), ("pkt-fmt-adamw-s1", ("kt", "pd")),
                                   ("jkt-adamw-s2", ("kt", "pd")), ("akt-adamw-s2", ("kt",)),
                                   ("jkt-adamw-s3", ("kt", "pd")), ("akt-adamw-s3", ("kt",)),
                                   *((f"bare-adamw-s{n}", ("kt",)) for n in (1, 2, 3)),
                                   *((f"pkt-adamw-s{n}", ("kt", "pd")) for n in (1, 2, 3))):
        settings = settings_of[row] = yaml.safe_load((state / "pretrain" / row / "settings.yaml").read_text())
        for stage in stages_with_adamw:  # the row's own optimizer wins over the budget's LAMB and lr
            assert settings[stage]["optim"]["name"] == "adamw" and settings[stage]["optim"]["lr"] == 1e-3
        # the rows named -sN (other pre-training seeds), and only they, run from run.seed N
        assert settings["run"]["seed"] == {"-s1": 1, "-s2": 2, "-s3": 3}.get(row[-3:], 0), row
    for s in ("-s1", "-s2", "-s3"):
        assert stages["jkt-adamw" + s] == ["jkt", "pd"] and stages["akt-adamw" + s] == ["akt"]
    assert stages["pkt-fmt-adamw-s1"] == stages["pkt-fmt-adamw"]
    fmt_s1 = settings_of["pkt-fmt-adamw-s1"]
    assert fmt_s1["kt"]["at"]["weight"] == 0 and fmt_s1["run"]["seed"] == 1  # feature maps alone, seed 1
    for s in ("-s1", "-s2", "-s3"):
        assert stages["pkt-adamw" + s] == stages["pkt-adamw"] and stages["bare-adamw" + s] == ["bare"]
    # another seed is another run: the students differ
    from safetensors.numpy import load_file

    w0, w1 = (load_file(state / "pretrain" / r / "student" / "model.safetensors") for r in ("pkt-adamw", "pkt-adamw-s1"))
    assert any(not (w0[k] == w1[k]).all() for k in w0)
    lat = cells["bench"]["latency"]
    assert set(lat) == {"teacher/ort-fp32", "teacher/ort-int8", "student/ort-fp32", "student/ort-int8"}
    md = (state / "kt-study.md").read_text()
    assert "| PKT, feature maps + attention + final stage |" in md and "Table 8: PKT > JKT > AKT" in md
    assert "| PKT (fmt + at, kt.input=clean) zero-shot STS-B >= 0.9 x the teacher's |" in md
    assert "| PKT (fmt + at, AdamW) beats bare (AdamW) on every task, and on the average by > 2 x pooled std |" in md
    assert "## Pre-training seeds (the AdamW pair)" in md and "| PKT - bare, pre-training seed 1 |" in md
    assert ("on the average by > 2 x the pooled std over every pre-training x fine-tuning run | pre-training seeds "
            "0, 1, 2, 3: average") in md
    assert (state / "kt-study.png").is_file()


def test_rerun_skips_finished_cells_and_only_reruns_a_row(smoke):
    state, _ = smoke
    path = state / "results.json"
    before = json.loads(path.read_text())
    proc = study("--smoke", "--state", state)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--- " not in proc.stdout  # no cell ran again
    assert json.loads(path.read_text()) == before
    # drop one fine-tuning cell of one row: --only that row runs exactly that cell again
    data = json.loads(path.read_text())
    del data["cells"]["finetune/jkt/rte/1"]
    path.write_text(json.dumps(data))
    proc = study("--smoke", "--state", state, "--only", "jkt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = [line[4:] for line in proc.stdout.splitlines() if line.startswith("--- ")]
    assert ran == ["finetune/jkt/rte/1"]
    assert set(json.loads(path.read_text())["cells"]) == set(before["cells"])


def test_a_new_checkout_prepares_the_corpus_again_for_the_rows_still_to_run(smoke, tmp_path):
    """The results file travels with the repository, the run folder does not: the shards are prepared again, and a
    corpus that no longer matches the study's record is refused in one line."""
    import shutil

    state, _ = smoke
    new = tmp_path / "state"
    shutil.copytree(state, new, ignore=shutil.ignore_patterns("shards", "jkt", "claims"))
    data = json.loads((new / "results.json").read_text())
    data["cells"] = {k: v for k, v in data["cells"].items() if "/jkt" not in k}
    record = dict(data["cells"]["data"])
    data["cells"]["data"]["tokens"] += 1  # as if the corpus had changed since
    (new / "results.json").write_text(json.dumps(data))
    proc = study("--smoke", "--state", new, "--only", "jkt", "--tasks", "rte")
    assert proc.returncode == 1 and "the corpus changed" in proc.stderr and "Traceback" not in proc.stderr
    assert "pretrain/jkt" not in json.loads((new / "results.json").read_text())["cells"]
    assert not (new / "shards").exists()
    data["cells"]["data"] = record
    (new / "results.json").write_text(json.dumps(data))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (new / "claims").mkdir(exist_ok=True)  # a process that died while preparing it: its claim is taken over
    (new / "claims" / "data-again.pid").write_text(dead.stdout.strip())
    proc = study("--smoke", "--state", new, "--only", "jkt", "--tasks", "rte")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preparing it again" in proc.stdout and not (new / "claims" / "data-again.pid").exists()
    cells = json.loads((new / "results.json").read_text())["cells"]
    assert cells["data"] == record and {"pretrain/jkt", "zeroshot/jkt", "finetune/jkt/rte/1"} <= set(cells)


def test_a_new_checkout_pretrains_a_finished_row_again_and_checks_it_against_its_record(smoke, tmp_path):
    """A row whose pre-training is recorded but whose run folder is gone is pre-trained again for its missing cells,
    and kept only where it reaches the recorded tokens and held-out MLM loss; otherwise it is set aside and the
    study stops in one line, the missing cells not run."""
    import shutil

    state, _ = smoke
    new = tmp_path / "state"
    shutil.copytree(state, new, ignore=shutil.ignore_patterns("pkt-fmt-at", "claims"))
    data = json.loads((new / "results.json").read_text())
    del data["cells"]["finetune/pkt-fmt-at/rte/1"]
    record = data["cells"]["pretrain/pkt-fmt-at"]
    loss = record["eval"]["student"]["mlm_loss"]
    record["eval"]["student"]["mlm_loss"] = loss + 0.5  # as if the code had changed since the row ran
    threads = record["env"].pop("threads")  # as a record from before thread counts were kept
    (new / "results.json").write_text(json.dumps(data))
    # no thread count in the record nor in OMP_NUM_THREADS: refused before anything runs, not after the whole run
    proc = study("--smoke", "--state", new, "--only", "pkt-fmt-at", "--tasks", "rte", threads=0)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "pretrain/pkt-fmt-at: its run folder is gone and its record names no thread count" in proc.stderr
    assert "set OMP_NUM_THREADS to the first run's" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (new / "pretrain" / "pkt-fmt-at").exists() and not (new / "pretrain" / "pkt-fmt-at.differs").exists()
    proc = study("--smoke", "--state", new, "--only", "pkt-fmt-at", "--tasks", "rte", threads=threads)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"pre-training it again on {threads} thread(s), as OMP_NUM_THREADS says" in proc.stdout
    assert "pretrain/pkt-fmt-at: pre-trained again" in proc.stderr and "pkt-fmt-at.differs" in proc.stderr
    assert f"the record names no thread count; this re-run used OMP_NUM_THREADS={threads}" in proc.stderr
    assert (new / "pretrain" / "pkt-fmt-at.differs" / "student").is_dir()
    assert not (new / "pretrain" / "pkt-fmt-at").exists()
    assert "finetune/pkt-fmt-at/rte/1" not in json.loads((new / "results.json").read_text())["cells"]
    record["eval"]["student"]["mlm_loss"], record["env"]["threads"] = loss, threads
    # a record made on CPU kernels this machine cannot dispatch to (an ARM run's): refused before anything runs
    isa = record["env"]["isa"]
    assert isa == __import__("torch").backends.cpu.get_cpu_capability() and record["env"]["isa_caps"] == {}
    record["env"]["isa"] = "SVE256"
    (new / "results.json").write_text(json.dumps(data))
    proc = study("--smoke", "--state", new, "--only", "pkt-fmt-at", "--tasks", "rte")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "record ran the CPU kernels at SVE256; this CPU runs them at" in proc.stderr
    assert not (new / "pretrain" / "pkt-fmt-at").exists()
    record["env"]["isa"] = isa
    (new / "results.json").write_text(json.dumps(data))
    # run on another thread count than the record's: the re-run takes the record's, on which CPU sums depend (the
    # message names the count in effect; the smoke model is too small for the count to change its numbers)
    proc = study("--smoke", "--state", new, "--only", "pkt-fmt-at", "--tasks", "rte", threads=1 if threads > 1 else 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"its run folder is gone; pre-training it again on {threads} thread(s), as the record was" in proc.stdout
    cells = json.loads((new / "results.json").read_text())["cells"]
    assert cells["pretrain/pkt-fmt-at"] == record and "finetune/pkt-fmt-at/rte/1" in cells
    again = json.loads((new / "pretrain" / "pkt-fmt-at" / "summary.json").read_text())
    assert again["eval"]["student"]["mlm_loss"] == loss  # the same machine and versions: the same model


def test_a_row_pre_trained_again_must_run_on_its_records_cpu_kernels(monkeypatch):
    """check_kernels: a record's ISA and caps against this process's, before any re-run. An uncapped run dispatches
    as if capped at its CPU's ISA, so an AVX2 CPU's record is made again on an AVX-512 CPU capped at AVX2."""
    import kt_study_recover
    from kt_study_cells import KERNEL_CAPS, CliError

    def check(record: dict, here: dict) -> str:
        monkeypatch.setattr(kt_study_recover, "cpu_kernels", lambda: here)
        try:
            kt_study_recover.check_kernels("row", record)
        except CliError as e:
            return str(e)
        return ""

    avx2, avx512 = ({"isa": isa, "isa_caps": {}} for isa in ("AVX2", "AVX512"))
    capped = {"isa": "AVX2", "isa_caps": KERNEL_CAPS["AVX2"]}
    assert check({}, avx512) == "" and check(avx512, avx512) == "" and check(avx2, avx2) == ""  # nothing to do
    assert check(avx2, capped) == "" and check(capped, avx2) == ""  # the same dispatch, capped or not
    msg = check(avx2, avx512)  # the session-32 case: told how to cap, before the run
    assert "record ran the CPU kernels at AVX2, this process at AVX512" in msg
    assert "run again with ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 set" in msg
    assert "capped by ATEN_CPU_CAPABILITY=avx2" in check(capped, avx512)
    partial = {"isa": "AVX512", "isa_caps": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}}  # one library capped: that exactly
    assert "run again with MKL_ENABLE_INSTRUCTIONS=AVX2 set" in check(partial, avx512)
    assert "run again with ATEN_CPU_CAPABILITY=avx512" in check(avx512, capped)  # capped here: the CPU may have it
    for record, here in ((avx512, avx2), ({"isa": "SVE256", "isa_caps": {}}, avx512)):
        assert f"cannot be made again here: run it on a CPU with {record['isa']}" in check(record, here)
    # capped at AVX-512 on an AVX2 CPU: still AVX2, so the CPU lacks it
    assert "cannot be made again" in check(avx512, {"isa": "AVX2", "isa_caps": KERNEL_CAPS["AVX512"]})


def test_report_only_rerenders(smoke, tmp_path):
    state, _ = smoke
    proc = study("--smoke", "--state", state, "--report", "--out", tmp_path)
    assert proc.returncode == 0 and "--- " not in proc.stdout
    assert (tmp_path / "kt-study.md").read_text() == (state / "kt-study.md").read_text()


def test_real_rows_pass_train_dry_run(tmp_path):
    """Every real row (MiniLM teacher, from-teacher student) is accepted by `mobilebert train --dry-run`; nothing
    is trained."""
    proc = study("--check", "--state", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every row's settings pass" in proc.stdout
    assert not (tmp_path / "pretrain").exists()


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kt_study_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_processes_share_one_results_file_and_claim_cells(tmp_path):
    ks = _script_module()
    a, b = ks.Results(tmp_path / "r.json", "smoke"), ks.Results(tmp_path / "r.json", "smoke")
    a.put("finetune/x/1", {"score": 1})
    b.put("finetune/y/1", {"score": 2})  # b never read x itself: its write must keep it
    assert set(json.loads((tmp_path / "r.json").read_text())["cells"]) == {"finetune/x/1", "finetune/y/1"}
    assert "finetune/y/1" in a  # a sees b's cell
    claims = tmp_path / "claims"
    assert ks.claim(claims, "finetune/z/1") is None  # claimed by this process
    assert ks.claim(claims, "finetune/z/1") is None  # its own claim again
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (claims / "finetune__w__1.pid").write_text(str(live.pid))
        assert ks.claim(claims, "finetune/w/1") == live.pid  # held by a live process: skipped here
    finally:
        live.kill()
        live.wait()
    assert ks.claim(claims, "finetune/w/1") is None  # its process died: taken over
    assert (claims / "finetune__w__1.pid").read_text() == str(__import__("os").getpid())


def test_orderings_are_reported_on_the_fine_tuned_average_and_on_zero_shot():
    from kt_study_report import orderings

    rows = {r: {"avg": None, "zero_shot": None} for r in ROWS}
    rows.update({"pkt-fmt-at": {"avg": (0.60, 0.01), "zero_shot": 0.61}, "pkt-fmt": {"avg": None, "zero_shot": 0.62},
                 "bare": {"avg": (0.50, 0.01), "zero_shot": 0.20}})
    got = {name: (measured, verdict) for name, measured, verdict in orderings(rows)}
    assert got["Table 9: + attention > + feature maps (+ distillation) > bare"] == ("–", "pending")
    assert got["Table 9 on zero-shot STS-B (one pre-training seed)"] == (
        "pkt-fmt-at 0.610 > pkt-fmt 0.620 > bare 0.200", "not held")
    assert got["Table 8 on zero-shot STS-B (one pre-training seed)"][1] == "pending"
    # the same chains over the AdamW rows: pkt-adamw is PKT with attention, the baseline bare-adamw
    rows.update({"pkt-adamw": {"avg": (0.59, 0.01), "zero_shot": 0.70}, "jkt-adamw": {"avg": (0.58, 0.01),
                 "zero_shot": 0.71}, "akt-adamw": {"avg": (0.57, 0.01), "zero_shot": 0.69}})
    got = {name: (measured, verdict) for name, measured, verdict in orderings(rows, "-adamw")}
    assert got["Table 8 (AdamW rows): PKT > JKT > AKT"] == ("pkt-adamw 59.0 > jkt-adamw 58.0 > akt-adamw 57.0", "held")
    assert got["Table 8 (AdamW rows) on zero-shot STS-B (one pre-training seed)"][1] == "not held"
    assert got["Table 9 (AdamW rows): + attention > + feature maps (+ distillation) > bare"][1] == "pending"


def run_bare_sts_b(state, *flags):
    """The smoke study's bare STS-B cells again with FLAGS (another set of fine-tuning cells): the cells that ran and
    the results after; the cells that were there before are asserted unchanged."""
    path = state / "results.json"
    before = json.loads(path.read_text())["cells"]
    proc = study("--smoke", "--state", state, *flags, "--only", "bare", "--tasks", "sts-b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = json.loads(path.read_text())["cells"]
    assert {k: v for k, v in cells.items() if k in before} == before
    return [line[4:] for line in proc.stdout.splitlines() if line.startswith("--- ")], cells


def test_mean_pooling_cells_are_a_second_set_with_their_own_table(smoke):
    """--pooling mean fine-tunes the same rows with model.pooling=mean into finetune-mean/ cells; the [CLS] cells
    stay as they are, and the report adds a table and the goal checks for mean pooling."""
    state, _ = smoke
    ran, cells = run_bare_sts_b(state, "--pooling", "mean")
    assert ran == ["finetune-mean/bare/sts-b/1"]
    assert cells["finetune-mean/bare/sts-b/1"]["metric"] == "spearmanr"
    settings = (state / "finetune-mean" / "bare" / "sts-b" / "1" / "settings.yaml").read_text()
    assert "pooling: mean" in settings
    md = (state / "kt-study.md").read_text()
    assert "## Mean pooling (model.pooling=mean)" in md and f"1 of {len(ROWS) * len(TASKS)} cells finished" in md
    assert "| PKT (fmt + at) beats bare on every task and on the average by > 2 x pooled std | – | **pending** |" in md


def test_siamese_cells_are_a_set_of_their_own_with_the_seed_1_student_checks(smoke):
    """--pooling siamese fine-tunes into finetune-siamese/ cells with model.pooling=siamese; the report gives them a
    section of their own, judged on the 4-head [CLS] student of pre-training seed 1 (the row they ran on)."""
    state, _ = smoke
    ran, cells = run_bare_sts_b(state, "--pooling", "siamese")
    assert ran == ["finetune-siamese/bare/sts-b/1"] and cells[ran[0]]["metric"] == "spearmanr"
    settings = yaml.safe_load((state / "finetune-siamese" / "bare" / "sts-b" / "1" / "settings.yaml").read_text())
    assert settings["model"]["pooling"] == "siamese"
    md = (state / "kt-study.md").read_text()
    section = md.split("## Siamese pairs (model.pooling=siamese)\n", 1)[1].split("\n## ", 1)[0]
    assert "`python benchmarks/kt_study.py --pooling siamese`" in section and "encoded alone" in section
    assert ("| PKT (fmt + at, AdamW, [CLS] x127, 4 heads, pre-training seed 1) beats bare (AdamW, seed 1) on every "
            "task and on the average by > 2 x pooled std | – | **pending** |") in section


def test_more_fine_tuning_epochs_are_a_set_of_cells_with_their_own_table(smoke):
    """--epochs N fine-tunes the same rows for N epochs into finetune-eN/ cells (train.epochs=N after the recipe's);
    the budget's cells stay as they are, and the report adds a table of the rows that have a cell, with the AdamW
    rows' fine-tuning goals."""
    state, _ = smoke
    ran, _ = run_bare_sts_b(state, "--epochs", "2")
    assert ran == ["finetune-e2/bare/sts-b/1"]
    settings = yaml.safe_load((state / "finetune-e2" / "bare" / "sts-b" / "1" / "settings.yaml").read_text())
    assert settings["train"]["epochs"] == 2 and settings["model"]["pooling"] is None
    md = (state / "kt-study.md").read_text()
    section = md.split("## [CLS] pooling (the checkpoints' own), 2 fine-tuning epochs (train.epochs=2)\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "`python benchmarks/kt_study.py --epochs 2`" in section and "1 of " in section
    assert "| bare (MLM + NSP, no teacher) |" in section and "| teacher" not in section  # rows with a cell only
    assert ("| PKT (fmt + at, AdamW, [CLS] x127) fine-tuned average >= 95% of the teacher's | – | **pending** |"
            in section)
    # a count below 1 is refused in one line
    rerun = study("--smoke", "--state", state, "--epochs", "0")
    assert rerun.returncode == 2 and "--epochs: 0 is not a positive whole number" in rerun.stderr


def test_variant_reads_the_pooling_and_the_epochs_from_a_cells_prefix():
    from kt_study_report import variant

    assert variant("finetune") == ("cls", None) and variant("finetune-mean") == ("mean", None)
    assert variant("finetune-e10") == ("cls", 10) and variant("finetune-mean-e3") == ("mean", 3)
    assert variant("finetune-siamese") == ("siamese", None)


def test_scale_is_a_study_of_its_own_at_k_times_the_steps(smoke, tmp_path):
    """--scale K pre-trains at K x the steps into its own results and report, and takes from the 1x study only the
    cells that do not depend on the steps (teacher, random student, latency)."""
    import argparse

    state, _ = smoke
    new = tmp_path / "x2"
    proc = study("--smoke", "--scale", "2", "--state", new, "--only", "bare", "--tasks", "sts-b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = json.loads((state / "results.json").read_text())
    data = json.loads((new / "results.json").read_text())
    assert data["budget"]["steps"] == 2 * base["budget"]["steps"]
    assert data["cells"]["pretrain/bare"]["steps"] == 2 * base["cells"]["pretrain/bare"]["steps"]
    assert "`python benchmarks/kt_study.py --scale 2`" in (new / "kt-study-x2.md").read_text()
    assert (new / "kt-study-x2.png").is_file() and not (new / "kt-study.md").exists()
    # inheriting from the 1x results file (real mode does it on start; smoke's teacher depends on the steps, so
    # the smoke study does not, and the test calls it)
    from kt_study import Study

    scaled = Study(argparse.Namespace(smoke=True, state=str(new), scale=2, pooling="cls"))
    before = set(scaled.results.data["cells"])
    fixed = {k for k in base["cells"] if k == "bench" or k.split("/")[1:2] in (["teacher"], ["random"])} - {
        "pretrain/teacher", "pretrain/random"}
    assert scaled.inherit(state / "results.json") == len(fixed - before) > 0
    cells = json.loads((new / "results.json").read_text())["cells"]
    assert set(cells) == before | fixed
    assert all(cells[k]["inherited_from"] == "results.json" for k in fixed - before)
    assert cells["pretrain/bare"] == data["cells"]["pretrain/bare"]  # a pre-trained row is never taken
    other = tmp_path / "other.json"  # another fine-tuning recipe: nothing is taken
    other.write_text(json.dumps({**base, "budget": {**base["budget"], "ft_batch": 99}}))
    assert scaled.inherit(other) == 0
    proc = study("--smoke", "--scale", "0", "--state", new)
    assert proc.returncode == 2 and "--scale: 0 is not a positive whole number" in proc.stderr


def test_seeds_section_reports_the_average_and_the_every_task_halves_apart():
    from kt_study_seeds import MRPC_FLOOR, seeds_section

    # PKT beats bare by 4 points on SST-2, STS-B and RTE with both pre-training seeds; MRPC tied at the floor
    base = {"sst-2": 0.66, "mrpc": 0.812, "sts-b": 0.15, "rte": 0.51}
    cells = {}
    for row, lift in (("bare-adamw", 0.0), ("bare-adamw-s1", 0.0), ("pkt-adamw", 0.04), ("pkt-adamw-s1", 0.04)):
        cells[f"zeroshot/{row}"] = {"spearman": 0.2 + 10 * lift, "params": 1}
        for task, score in base.items():
            for seed in (1, 2, 3):
                jitter = 0.002 * seed  # the same fine-tuning noise in every row: the pooled std stays small
                cells[f"finetune/{row}/{task}/{seed}"] = {
                    "row": row, "task": task, "seed": seed, "score": score + jitter + (0 if task == "mrpc" else lift)}
    md = "\n".join(seeds_section(cells, (1, 2, 3)))
    assert ("pre-training seeds 0, 1: average +3.0 vs 2 x 0.2 (n = 6 / 6 runs): held; every task: not on MRPC | "
            "**not held** |") in md
    assert "| bare (AdamW) | 0.200 ± 0.000 (n=2) |" in md  # seed 2 not run: each figure says of how many runs
    assert f"F1 {100 * MRPC_FLOOR:.1f}" in md and "| PKT - bare, pre-training seed 1 | +0.400 |" in md
    # PKT ahead on MRPC too: both halves hold, and the floor note goes (no row sits at it)
    for row in ("pkt-adamw", "pkt-adamw-s1"):
        for seed in (1, 2, 3):
            cells[f"finetune/{row}/mrpc/{seed}"]["score"] += 0.05
    for row in ("bare-adamw", "bare-adamw-s1"):
        for seed in (1, 2, 3):
            cells[f"finetune/{row}/mrpc/{seed}"]["score"] += 0.02
    md = "\n".join(seeds_section(cells, (1, 2, 3)))
    assert "every task: held | **held** |" in md and "answering 'paraphrase'" not in md
    # no seed-1 row measured yet: no section at all
    assert seeds_section({k: v for k, v in cells.items() if "-s1" not in k}, (1, 2, 3)) == []
    # seed 2 pre-trained, its fine-tuning not finished: shown, and the check is still judged on seeds 0 and 1
    cells.update({f"zeroshot/{r}-s2": {"spearman": 0.3, "params": 1} for r in ("bare-adamw", "pkt-adamw")})
    cells["finetune/pkt-adamw-s2/sst-2/1"] = {"row": "pkt-adamw-s2", "task": "sst-2", "seed": 1, "score": 0.7}
    md = "\n".join(seeds_section(cells, (1, 2, 3)))
    assert "| PKT - bare, pre-training seed 2 | +0.000 | – |" in md and "pre-training seeds 0, 1: average" in md


def test_orderings_section_judges_the_chains_on_the_seeds_every_row_has():
    from kt_study_seeds import orderings_section

    # every task scores v (+ the same fine-tuning jitter in every row); zero-shot is v too. PKT's seed 2 is shared by
    # no other row, so the chains are judged on seeds 0 and 1: Table 8 holds on the means but not at seed 1 alone
    v = {"pkt-adamw": (0.60, 0.60, 0.70), "jkt-adamw": (0.58, 0.61), "akt-adamw": (0.55, 0.55),
         "pkt-fmt-adamw": (0.59, 0.59), "bare-adamw": (0.50, 0.50)}
    cells = {}
    for base, per_seed in v.items():
        for pre, score in enumerate(per_seed):
            row = base if pre == 0 else f"{base}-s{pre}"
            cells[f"zeroshot/{row}"] = {"spearman": score, "params": 1}
            for task in TASKS:
                for seed in (1, 2, 3):
                    cells[f"finetune/{row}/{task}/{seed}"] = {"score": score + 0.001 * seed}
    md = "\n".join(orderings_section(cells, (1, 2, 3)))
    assert "| pkt-adamw | 0, 1 and 2 | 0.633 ± 0.058 | 63.53 ± 5.77 | 60.20, 60.20, 70.20 |" in md
    assert "| jkt-adamw | 0 and 1 | 0.595 ± 0.021 | 59.70 ± 2.12 | 58.20, 61.20 |" in md
    # the gap against the pooled std of every (pre-training, fine-tuning) run: sqrt((0.008 + 2.708) / 2) = 1.17
    assert ("| Table 8: PKT > JKT > AKT, fine-tuned average, over the pre-training seeds every row has | seeds 0 and 1: "
            "pkt-adamw 60.20 > jkt-adamw 59.70 > akt-adamw 55.20 (gaps +0.50 vs std 1.17; +4.50 vs std 1.17); "
            "at each seed alone: held at 1 of 2 | **held** |") in md
    assert "pkt-adamw 0.600 > jkt-adamw 0.595 > akt-adamw 0.550 (gaps +0.005 vs std 0.015; +0.045 vs std 0.015)" in md
    assert "bare-adamw 50.20 (gaps +1.00 vs std 0.09; +9.00 vs std 0.09); at each seed alone: held at 2 of 2 | **held**" in md
    # JKT ahead at both seeds: Table 8 not held, whatever one seed says
    for key, rec in cells.items():
        if key.startswith("finetune/jkt-adamw"):
            rec["score"] += 0.03
    md = "\n".join(orderings_section(cells, (1, 2, 3)))
    assert "pkt-adamw 60.20 > jkt-adamw 62.70 > akt-adamw 55.20 (gaps -2.50 vs std 1.17; +7.50 vs std 1.17); at each " \
           "seed alone: held at 0 of 2 | **not held** |" in md
    # AKT's seed 1 unfinished: Table 8 is pending (one shared seed), Table 9 still judged
    md = "\n".join(orderings_section({k: v for k, v in cells.items() if "akt-adamw-s1/rte" not in k}, (1, 2, 3)))
    assert "| Table 8: PKT > JKT > AKT, fine-tuned average, over the pre-training seeds every row has | – | **pending** |" in md
    assert md.count("**held**") == 2
    # only the bare / PKT pair has other seeds (it has its own section): no section
    assert orderings_section({k: v for k, v in cells.items() if not any(f"{r}-s" in k for r in (
        "jkt-adamw", "akt-adamw", "pkt-fmt-adamw"))}, (1, 2, 3)) == []


def test_a_stopped_command_is_reported_as_stopped_not_by_its_last_warning(monkeypatch):
    """SIGTERM makes `mobilebert train` save and exit 143; its last stderr line is then some earlier warning."""
    import mobilebert.cli
    from kt_study_cells import CliError, cli

    def stopped(args):
        print("loading X: missing (newly initialised): cls.predictions.bias", file=sys.stderr)
        return 143

    monkeypatch.setattr(mobilebert.cli, "main", stopped)
    with pytest.raises(CliError, match=r"`mobilebert train` was stopped by a signal \(exit 143\).*continue the cell"):
        cli(["train", "cfg.yaml"])

    monkeypatch.setattr(mobilebert.cli, "main", lambda args: print("train: error: bad key", file=sys.stderr) or 2)
    with pytest.raises(CliError, match=r"exited with 2: train: error: bad key"):
        cli(["train", "cfg.yaml"])


def test_a_resumed_runs_wall_time_and_tokens_are_labelled_as_its_last_sitting():
    """A resumed `mobilebert train` reports the wall clock and tokens of its last sitting only; the cell table says so."""
    from kt_study_report import markdown
    from kt_study_rows import SMOKE

    cells = {"pretrain/bare": {"row": "bare", "resumed": True, "wall_s": 120.0, "tokens": 1000},
             "pretrain/pkt-fmt": {"row": "pkt-fmt", "resumed": False, "wall_s": 60.0, "tokens": 2000}}
    md = markdown({"mode": "smoke", "cells": cells}, SMOKE)
    assert "| pretrain/bare | 2.0 min (last sitting: resumed) | 1,000 tokens |" in md
    assert "| pretrain/pkt-fmt | 1.0 min | 2,000 tokens |" in md
