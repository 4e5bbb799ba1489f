"""Command-line interface: `mlem-jax <command> …` (or `python -m mlem_jax …`).

One module per command, each adding its subparser (`add_parser`) and running it
(`run`):

- `train` (`_train.py`): train a UNet ladder on a dataset and write a ladder directory.
- `distill` (`_distill.py`): distil a ladder's top level into its cheaper levels.
- `sample` (`_sample.py`): draw samples from a ladder with ML-EM or Euler–Maruyama;
  across the processes of a `jax.distributed` run with `_distributed.py`.
- `demo` (`_demo.py`, its report in `_demo_report.py`): ML-EM against
  Euler–Maruyama and SDE-DPM-Solver++(1) on one ladder.

What they share: argument types, pre-flight checks and ladder loading
(`_common.py`), the timed solves (`_solves.py`), the calibrated schedules
(`_budget.py`) and the PNG outputs (`_images.py`). The CLI sits on top of the
package: it imports the method and the application, never the reverse.

The cost–error benchmark, once `mlem-jax bench`, is `python benchmarks/cost_error.py`
(same options); its harness lives beside it in `benchmarks/`, outside the package.
"""

from ._budget import (
    COSTS as COSTS,
    budget_range as budget_range,
    budget_schedule as budget_schedule,
    calibrated_schedule as calibrated_schedule,
    describe_cost as describe_cost,
    feasible_budget as feasible_budget,
    ladder_calibration as ladder_calibration,
    level_schedule as level_schedule,
    priced_calibration as priced_calibration,
)
from ._common import (
    available_memory as available_memory,
    check_memory as check_memory,
    check_output_dir as check_output_dir,
    check_output_file as check_output_file,
)
from ._demo import (
    DemoConfig as DemoConfig,
    demo_calibration as demo_calibration,
    run_demo as run_demo,
)
from ._demo_report import (
    format_table as format_table,
    matched_cost_lines as matched_cost_lines,
    plot_demo as plot_demo,
)
from ._images import image_grid as image_grid, save_png as save_png
from ._main import build_parser as build_parser, main as main
from ._sample import sample_devices as sample_devices
from ._solves import (
    SINGLE_SAMPLER as SINGLE_SAMPLER,
    run_em as run_em,
    run_mlem as run_mlem,
    run_sampler as run_sampler,
    run_sharded as run_sharded,
)
