"""configs/ablations/table_successors.yaml: its rows, and the COCO configs it runs."""

import ablation
import pytest

from retinanet_fl.model_zoo import get_config_file
from tests.test_successor_configs import flat_config

# The table's row of each COCO config.
CONFIG_ROWS = {
    "retinanet_R50_FPN_atss.yaml": "fl_atss",
    "retinanet_R50_FPN_atss_qfl.yaml": "qfl_atss",
    "retinanet_R50_FPN_atss_vfl.yaml": "vfl_atss",
}


@pytest.mark.parametrize("preset", [None, "synthetic", "synthetic_sparse"])
def test_five_rows_with_and_without_presets(preset):
    table = ablation.load_experiment("successors", preset)
    assert [row.name for row in table.rows] == [
        "fl",
        "fl_atss",
        "qfl_atss",
        "vfl_atss",
        "vfl_atss_one_anchor",
    ]
    assert [row.paper[0] for row in table.rows] == [35.7, 39.3, 40.2, 41.6, None]


@pytest.mark.parametrize("name", sorted(CONFIG_ROWS))
def test_rows_are_the_coco_configs(name):
    table = ablation.load_experiment("successors")
    row = {row.name: row for row in table.rows}[CONFIG_ROWS[name]]
    opts = ablation.format_opts([*table.base_opts, *table.opts, *row.opts])
    assert flat_config(str(table.base_config), opts) == flat_config(get_config_file(name))


def test_one_anchor_row_is_one_square_anchor_of_the_base_size():
    table = ablation.load_experiment("successors")
    row = table.rows[-1]
    cfg = flat_config(str(table.base_config), ablation.format_opts(row.opts))
    base = flat_config(str(table.base_config), [])
    assert cfg["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"] == [[1.0]]
    assert cfg["MODEL.RETINANET_FL.ANCHOR_SCALES_PER_OCTAVE"] == 1
    assert cfg["MODEL.RETINANET_FL.ANCHOR_SCALE"] == base["MODEL.RETINANET_FL.ANCHOR_SCALE"]
