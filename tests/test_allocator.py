"""`remix-rft train` runs under jemalloc where it is installed (remix_rft/memory.py): the re-exec decision, and the
real command line reporting the allocator it ended up with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remix_rft.errors import ConfigError
from remix_rft.memory import (
    ALLOCATOR_ENV,
    JEMALLOC_CONF,
    active_allocator,
    allocator_reexec_env,
    find_jemalloc,
)

LIB = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def test_auto_preloads_jemalloc_with_its_decay_settings_on_linux():
    env = allocator_reexec_env({"PATH": "/bin"}, "linux", LIB)
    assert env == {"PATH": "/bin", "LD_PRELOAD": LIB, "MALLOC_CONF": JEMALLOC_CONF}


def test_the_users_malloc_conf_and_preloads_are_kept():
    env = allocator_reexec_env({"MALLOC_CONF": "narenas:1", "LD_PRELOAD": "/x/libfoo.so"}, "linux", LIB)
    assert env["MALLOC_CONF"] == "narenas:1"
    assert env["LD_PRELOAD"] == f"{LIB} /x/libfoo.so"


@pytest.mark.parametrize("environ, platform, lib", [
    ({ALLOCATOR_ENV: "system"}, "linux", LIB),     # asked for glibc
    ({"LD_PRELOAD": LIB}, "linux", LIB),            # already preloaded: the re-executed process stops here
    ({}, "darwin", LIB),                            # LD_PRELOAD is Linux's
    ({}, "linux", None),                            # auto without jemalloc: the system allocator
    ({ALLOCATOR_ENV: ""}, "linux", None),
])
def test_no_reexec(environ, platform, lib):
    assert allocator_reexec_env(environ, platform, lib) is None


def test_asking_for_jemalloc_without_it_or_for_an_unknown_allocator_is_a_clear_error():
    with pytest.raises(ConfigError, match=f"{ALLOCATOR_ENV}=jemalloc: jemalloc is not installed.*libjemalloc2"):
        allocator_reexec_env({ALLOCATOR_ENV: "jemalloc"}, "linux", None)
    with pytest.raises(ConfigError, match=f"{ALLOCATOR_ENV}='tcmalloc': must be one of auto, jemalloc, system"):
        allocator_reexec_env({ALLOCATOR_ENV: "tcmalloc"}, "linux", LIB)
    assert allocator_reexec_env({ALLOCATOR_ENV: "JEMALLOC"}, "linux", LIB)["LD_PRELOAD"] == LIB


def test_active_allocator_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(f"7f00-7f01 r-xp 00000000 08:01 1 {LIB}\n7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/libc.so.6\n")
    assert active_allocator(str(maps)) == "jemalloc"
    maps.write_text("7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/libc.so.6\n")
    assert active_allocator(str(maps)) == "system"
    assert active_allocator(str(tmp_path / "none")) == "system"
    assert active_allocator() == ("jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "system")


def test_find_jemalloc_prefers_an_existing_file(tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    assert find_jemalloc((str(tmp_path / "missing.so"), str(lib))) == str(lib)


TINY_RUN = ["model.name=tiny-random", "train.steps=1", "train.prompts_per_step=2", "train.samples_per_prompt=2",
            "train.minibatch_size=2", "rollout.max_new_tokens=4", "eval.benchmarks=[]", "logging.tensorboard=false",
            "logging.progress=false", "data.train_options={size: 16}", "checkpoint.save_final=false"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")
@pytest.mark.parametrize("choice", ["auto", "system"])
def test_the_train_command_runs_under_the_allocator_it_reports(tmp_path, choice):
    """The real command line: with jemalloc installed (CI installs Debian's libjemalloc2) `auto` re-executes
    training under it; `system` keeps glibc. The trainer logs what /proc/self/maps shows."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env[ALLOCATOR_ENV] = choice
    done = subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", *TINY_RUN,
                           f"logging.output_dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "jemalloc" if choice == "auto" and find_jemalloc() is not None else "system"
    assert f"host memory allocator: {expected}" in done.stderr


def test_only_a_training_command_line_is_re_executed():
    from remix_rft.cli import _trains

    assert _trains(["train"]) and _trains(["--debug", "train", "train.steps=2"]) and _trains(["train", "--resume"])
    assert not _trains(["train", "--print-config"]) and not _trains(["train", "--help"])
    assert not _trains(["eval", "--model", "x"]) and not _trains(["plan"]) and not _trains([])


def test_a_bad_allocator_choice_fails_cleanly_before_training():
    env = {**os.environ, ALLOCATOR_ENV: "tcmalloc"}
    done = subprocess.run([sys.executable, "-m", "remix_rft.cli", "train", "train.steps=1"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"remix-rft train: error: environment variable {ALLOCATOR_ENV}='tcmalloc': "
                                   "must be one of auto, jemalloc, system")
