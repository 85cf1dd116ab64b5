"""How long each step of a build took (issue #24), without the engine: the classic builder's JSON stream,
BuildKit's plain progress and buildah's interleaved stages, fed as recorded, against a fake clock; the
duration lines and closing table in the log on disk; the few slowest steps `dlenv build` prints."""

from __future__ import annotations

import io
import re

from rich.console import Console

from builder.cli.common import Ctx, print_slowest
from builder.engine import buildah, buildkit, sdk
from builder.engine.buildlog import LOG_MARK, StepClock, StepTime, slowest, summary_lines


class FakeTime:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# The classic builder's stream of a small two-stage build (as docker-py decodes it): a FROM, cached
# steps, two that ran. Each entry: seconds that pass before the chunk arrives, the chunk.
SDK_STREAM = [
    (0.0, {"stream": "Step 1/6 : FROM dlenv/base:bookworm-minbase-324ac74f0d4e AS build\n"}),
    (0.1, {"stream": "\n"}), (0.0, {"stream": " ---> 7b944380a473\n"}),
    (0.2, {"stream": "Step 2/6 : ENV DEBIAN_FRONTEND=noninteractive\n"}),
    (0.1, {"stream": " ---> Using cache\n"}), (0.0, {"stream": " ---> 454005300df0\n"}),
    (0.1, {"stream": "Step 3/6 : RUN apt-get update && apt-get install -y python3-venv\n"}),
    (0.5, {"stream": " ---> Running in 7a2a8be392f3\n"}),
    (30.0, {"stream": "Setting up python3-venv (3.11.2-1+b1) ...\n"}),
    (11.2, {"stream": " ---> 4e515ebe82b4\n"}),
    (0.0, {"stream": "Step 4/6 : FROM dlenv/base:bookworm-minbase-324ac74f0d4e AS runtime\n"}),
    (0.1, {"stream": " ---> 7b944380a473\n"}),
    (0.0, {"stream": "Step 5/6 : COPY --from=build /opt/venv /opt/venv\n"}),
    (3.4, {"stream": " ---> 9d1c3e5f2a11\n"}),
    (0.0, {"stream": "Step 6/6 : LABEL org.dlenv.content-hash=abc\n"}),
    (0.3, {"stream": " ---> Running in 11aa22bb33cc\n"}),
    (0.1, {"aux": {"ID": "sha256:feed"}}),
    (0.0, {"stream": "Successfully built feed\n"}),
]


class _Api:
    def __init__(self, chunks, clock):
        self.chunks, self.clock = chunks, clock

    def build(self, **kwargs):
        for wait, chunk in self.chunks:
            self.clock.t += wait
            yield chunk


class _Client:
    def __init__(self, chunks, clock):
        self.api = _Api(chunks, clock)


def _by_step(steps):
    return {s.step: s for s in steps}


def test_the_classic_builders_steps_are_timed_from_its_stream(tmp_path):
    now = FakeTime()
    clock = StepClock(now)
    log = tmp_path / "logs" / "x.log"
    assert sdk.build(_Client(SDK_STREAM, now), tmp_path, "dlenv/x:1-candidate", {}, log, clock=clock) == "sha256:feed"
    steps = _by_step(clock.steps)
    assert round(steps[3].seconds, 1) == 41.7 and not steps[3].cached
    assert steps[2].cached and not steps[2].ran and not steps[1].ran      # from the cache; a FROM
    assert round(steps[5].seconds, 1) == 3.4 and round(steps[6].seconds, 1) == 0.4
    assert [s.label for s in slowest(clock.steps)] == ["step 3/6", "step 5/6"]   # ran, and a second or more
    text = log.read_text().splitlines()
    # each step's duration just before the next step starts; then the closing table
    at = text.index("Step 4/6 : FROM dlenv/base:bookworm-minbase-324ac74f0d4e AS runtime")
    assert text[at - 1] == f"{LOG_MARK} step 3/6 took 41.7s"
    assert f"{LOG_MARK} step 2/6 took 0.2s (cached)" in text
    assert text[-5] == f"{LOG_MARK} step 6/6 took 0.4s"
    assert text[-4] == f"{LOG_MARK} 6 steps, 3 ran; the slowest:"
    assert text[-3] == f"{LOG_MARK}    41.7s  step 3/6  RUN apt-get update && apt-get install -y python3-venv"
    assert text[-2].startswith(f"{LOG_MARK}     3.4s  step 5/6  COPY --from=build")


def test_a_failed_classic_build_keeps_the_figures_up_to_the_failure(tmp_path):
    now = FakeTime()
    stream = SDK_STREAM[:9] + [(5.0, {"error": "The command returned a non-zero code: 100",
                                       "errorDetail": {"message": "returned a non-zero code: 100"}})]
    log = tmp_path / "x.log"
    try:
        sdk.build(_Client(stream, now), tmp_path, "dlenv/x:1-candidate", {}, log, clock=StepClock(now))
    except Exception as exc:     # noqa: BLE001 - the BuildError of the engine, checked by its own tests
        assert exc.log_tail and not any(line.startswith(LOG_MARK) for line in exc.log_tail)
    text = log.read_text()
    assert f"{LOG_MARK} step 3/6 took 35.5s" in text and f"{LOG_MARK} 3 steps, 1 ran; the slowest:" in text


def test_a_build_from_the_cache_alone_has_no_slowest_steps():
    steps = [StepTime(1, 3, "FROM x AS build", seconds=0.1), StepTime(2, 3, "RUN a", seconds=0.2, cached=True),
             StepTime(3, 3, "RUN b", seconds=2.0, cached=True)]
    assert slowest(steps) == [] and summary_lines(steps) == [f"{LOG_MARK} 3 steps, none ran: all from the cache"]
    quick = steps + [StepTime(4, 4, "LABEL x=1", seconds=0.3)]
    assert slowest(quick) == []                   # what ran took under a second: no figure worth a line
    many = [StepTime(i, 9, f"RUN {i}", seconds=float(i)) for i in range(1, 10)]
    assert [s.step for s in slowest(many)] == [9, 8, 7, 6, 5]


# BuildKit's plain progress: vertices of two stages at once, their own figures (DONE / CACHED).
PLAIN = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#4 [build 1/4] FROM docker.io/dlenv/base:x
#4 DONE 0.0s
#5 [build 2/4] RUN apt-get update
#5 CACHED
#6 [runtime 2/3] RUN apt-get update && apt-get install -y libgomp1
#7 [build 3/4] RUN /opt/venv/bin/pip install -r /etc/dlenv-build/pylock/numpy.txt
#7 0.812 Collecting numpy==1.26.4
#6 12.31 Setting up libgomp1
#6 DONE 14.2s
#7 DONE 41.2s
#8 [runtime 3/3] COPY --from=build /opt/venv /opt/venv
#8 DONE 2.5s
"""


def test_buildkits_own_figures_are_read(tmp_path):
    plain = buildkit._PlainLog(StepClock(FakeTime()))
    for line in PLAIN.splitlines():
        assert plain.feed(line) == []                 # BuildKit writes its own figures into the log
    steps = {(s.stage, s.step): s for s in plain.clock.steps}
    assert steps[("build", 3)].seconds == 41.2 and steps[("runtime", 2)].seconds == 14.2
    assert steps[("build", 2)].cached and not steps[("build", 1)].ran
    assert [s.label for s in slowest(plain.clock.steps)] == ["step 3/4 [build]", "step 2/3 [runtime]",
                                                              "step 3/3 [runtime]"]
    assert plain.progress.instruction == "[runtime] COPY --from=build /opt/venv /opt/venv"


def test_buildkit_closes_its_log_with_the_slowest_steps(tmp_path):
    script = "\n".join(f"echo '{line}'" for line in PLAIN.splitlines())
    cli = tmp_path / "docker"
    cli.write_text("#!/bin/bash\nwhile [ $# -gt 0 ]; do [ \"$1\" = --iidfile ] && echo sha256:feed > \"$2\"; shift; done\n"
                   + script + "\n")
    cli.chmod(0o755)
    clock = StepClock()
    log = tmp_path / "x.log"
    assert buildkit.build(str(cli), tmp_path, "dlenv/x:1-candidate", {}, log, clock=clock) == "sha256:feed"
    text = log.read_text().splitlines()
    assert text[-4] == f"{LOG_MARK} 5 steps, 3 ran; the slowest:"
    assert text[-3].startswith(f"{LOG_MARK}    41.2s  step 3/4 [build]  RUN /opt/venv/bin/pip install")
    assert len(clock.steps) == 5


# buildah --jobs 2: the runtime stage's COPY --from=build is announced at once and waits for the build
# stage. Each entry: seconds that pass before the line, the line.
BUILDAH = [
    (0.0, "[2/2] STEP 1/4: FROM dlenv/base:x AS runtime"),
    (0.0, "[1/2] STEP 1/3: FROM dlenv/base:x AS build"),
    (0.1, "[2/2] STEP 2/4: RUN apt-get update && apt-get install -y libgomp1"),
    (0.1, "[1/2] STEP 2/3: RUN apt-get update && apt-get install -y python3-venv"),
    (9.0, "Setting up libgomp1"),
    (1.0, "[2/2] STEP 3/4: COPY --from=build /opt/venv /opt/venv"),
    (20.0, "Setting up python3-venv"),
    (1.0, "[1/2] STEP 3/3: RUN /opt/venv/bin/pip install numpy"),
    (0.5, "--> Using cache 5e3c1d"),
    (25.0, "Successfully installed numpy-1.26.4"),
    (4.0, "[2/2] STEP 4/4: CMD [\"bash\"]"),
    (0.5, "[2/2] COMMIT dlenv/x:1"),
    (0.2, "Successfully tagged localhost/dlenv/x:1"),
]


def test_buildahs_interleaved_stages_are_timed_per_stage():
    now = FakeTime()
    steps = buildah._StepLog(StepClock(now))
    notes = []
    for wait, line in BUILDAH:
        now.t += wait
        notes += steps.feed(line)
    notes += steps.clock.finish()
    timed = {(s.stage, s.step): s for s in steps.clock.steps}
    assert round(timed[("runtime", 2)].seconds, 1) == 10.1         # until its stage's next step
    assert round(timed[("build", 2)].seconds, 1) == 31.0
    # the build stage's last step ends with its last line; the copy waited for it and took 4 s
    assert round(timed[("build", 3)].seconds, 1) == 25.5 and timed[("build", 3)].cached
    assert round(timed[("runtime", 3)].seconds, 1) == 4.0
    assert round(timed[("runtime", 4)].seconds, 1) == 0.5            # ended by the COMMIT
    assert f"{LOG_MARK} step 3/3 [build] took 25.5s (cached)" in notes
    assert f"{LOG_MARK} step 3/4 [runtime] took 4.0s" in notes
    assert steps.progress.instruction == '[stage 2/2] CMD ["bash"]'


def test_buildah_writes_each_duration_before_the_step_it_ends(tmp_path):
    cli = tmp_path / "buildah"
    lines = "\n".join(f"echo '{line}'" for _, line in BUILDAH[:6])
    cli.write_text("#!/bin/bash\ncase \" $* \" in *\" build \"*) ;; *) exit 0;; esac\n"
                   "while [ $# -gt 0 ]; do [ \"$1\" = --iidfile ] && echo feed > \"$2\"; shift; done\n" + lines + "\n")
    cli.chmod(0o755)
    log = tmp_path / "x.log"
    assert buildah.build(str(cli), tmp_path, "dlenv/x:1", {}, log, epoch=1) == "sha256:feed"
    text = log.read_text().splitlines()
    at = text.index("[2/2] STEP 3/4: COPY --from=build /opt/venv /opt/venv")
    assert text[at - 1].startswith(f"{LOG_MARK} step 2/4 [runtime] took ")
    assert f"{LOG_MARK} 5 steps, 3 ran; the slowest:" in text


def _ctx(quiet: bool) -> tuple[Ctx, io.StringIO]:
    ctx = Ctx(debug=False, quiet=quiet)
    out = io.StringIO()
    ctx._err = Console(file=out, force_terminal=True, highlight=False, soft_wrap=True)
    return ctx, out


def test_dlenv_build_prints_the_slowest_steps_in_one_short_block(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    steps = [StepTime(i, 40, f"RUN step number {i} " + "x" * 200, seconds=float(i)) for i in range(1, 41)]
    ctx, out = _ctx(quiet=False)
    print_slowest(ctx, steps)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 and "slowest steps:" in lines[0]
    assert "40.0s  step 40/40  RUN step number 40 xxx" in lines[1] and "x..." in lines[1]
    assert "step 36/40" in lines[-1] and len(re.sub(r"\x1b\[[0-9;]*m", "", lines[1])) <= 90
    assert "\x1b[36m" not in out.getvalue()          # NO_COLOR: no colour
    ctx, out = _ctx(quiet=True)
    print_slowest(ctx, steps)
    assert out.getvalue() == ""                       # --quiet
    ctx, out = _ctx(quiet=False)
    print_slowest(ctx, [StepTime(2, 2, "RUN a", seconds=9.0, cached=True)])
    assert out.getvalue() == ""                       # a build from the cache alone
