"""Grid files: the named grids expand as documented, bad files fail whole with one clear error, keys are stable."""
from __future__ import annotations

import pytest

from experiments.grid import GridError, backbone_layers, build_grid, list_grids, load_grid
from mudpt.config import RunConfig

import test_experiments_support  # noqa: F401  (registers exp-test-a / exp-test-b)

NAMED = ("ablation-depth", "ablation-fusion", "few-shot", "base2new", "cross-dataset", "domain-generalization")


def test_named_grids_are_listed_and_load_on_both_suites(tmp_path):
    assert {n for n, _ in list_grids()} >= set(NAMED)
    for name in NAMED:
        for root in (None, str(tmp_path)):
            g = load_grid(name, data_root=root)
            assert g.cells and g.suite == ("coop" if root else "embedded")
            assert all(c.config.data_root == root for c in g.cells)


def test_ablation_depth_spans_every_layer_of_the_backbone(tmp_path):
    from mudpt.toy.datasets import EMBEDDED_SUITE

    g = load_grid("ablation-depth")
    L = backbone_layers("mudpt-tiny")
    assert g.n_layers == L
    assert sorted({c.config.options_dict["depth"] for c in g.cells}) == list(range(1, L + 1))
    assert len(g.cells) == L * len(EMBEDDED_SUITE) * len(g.seeds)
    # depth L is the method's default on this backbone, so its label is plain `mudpt`
    assert {c.label for c in g.cells} == {f"mudpt[depth={d}]" for d in range(1, L)} | {"mudpt"}
    coop = load_grid("ablation-depth", data_root=str(tmp_path))
    assert coop.backbone.name == "ViT-B-16" and coop.n_layers == 12 and coop.seeds == [1, 2, 3]
    assert "mudpt[depth=12]" in {c.label for c in coop.cells}


def test_fusion_grid_and_transfer_grids_have_the_documented_cells(tmp_path):
    g = load_grid("ablation-fusion", data_root=str(tmp_path))
    combos = {(c.config.options_dict["fusion"], c.config.options_dict["fusion_net"]) for c in g.cells}
    assert combos == {(f, n) for f in ("bi", "off", "t2v", "v2t") for n in ("linear", "injection")}
    for name in ("cross-dataset", "domain-generalization"):
        g = load_grid(name, data_root=str(tmp_path))
        # one cell per (method, seed): 7 training methods x 3 seeds + zero-shot CLIP once
        assert len(g.cells) == 7 * 3 + 1
        assert {c.config.dataset for c in g.cells} == {"imagenet"}
        assert all(len(c.config.targets) == (10 if name == "cross-dataset" else 4) for c in g.cells)
    dg = load_grid("domain-generalization")
    from mudpt.toy.datasets import DG_TARGETS

    assert all(c.config.targets == tuple(DG_TARGETS[c.config.dataset]) for c in dg.cells)


def _grid(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("body, expected", [
    ("methd: mudpt\ndataset: exp-test-a\n", ["methd: unknown key", "valid: protocol, method"]),
    ("method: mudtp\ndataset: exp-test-a\n", ["method: unknown method 'mudtp'", "valid: cocoop, coop"]),
    ("method: mudpt\ndataset: exp-test-a\noptions: {fusion: sideways}\n",
     ["options: mudpt: fusion='sideways' is not valid", "'bi', 'off', 't2v', 'v2t'"]),
    ("method: mudpt\ndataset: exp-test-a\noptions: {fusion: off}\n", ["quote it"]),
    ("method: mudpt\ndataset: exp-test-a\noptions: {fuse: bi}\n", ["has no switch 'fuse'", "valid: fusion, fusion_net"]),
    ("method: mudpt\ndatasets: [exp-test-a, nope]\n", ["datasets: unknown dataset 'nope'", "valid: "]),
    ("method: mudpt\ndataset: exp-test-a\nshots: [4, 0]\n",
     ["shots: 0 is not valid for protocol 'fewshot'", "only protocol 'zeroshot'"]),
    ("method: coop\ndataset: exp-test-a\nprotocol: domain-generalization\n", ["targets: protocol 'domain-generalization'"]),
    ("method: coop\ndataset: exp-test-a\nprotocol: fewshots\n", ["protocol: 'fewshots' is not a protocol", "valid: fewshot"]),
    ("method: coop\ndataset: exp-test-a\nrecipe: {learning_rate: 0.1}\n", ["recipe.learning_rate: unknown recipe key", "valid: lr"]),
    ("method: coop\ndataset: exp-test-a\nrecipe: {epochs: 2.5}\n", ["recipe.epochs: 2.5 has the wrong type"]),
    ("method: coop\ndataset: caltech101\n", ["read from the CoOp data folder: pass --data-root"]),
    ("method: coop\ndataset: toy-shapes-inverted\n", ["test-only", "`targets` entry"]),
    ("method: coop\ndataset: exp-test-a\ncells: [{method: mudpt, color: red}]\n", ["cells[0].color: unknown key"]),
    ("method: coop\ndataset: exp-test-a\nembedded: {seeds: [1], nme: x}\n", ["embedded.nme: unknown key"]),
    ("method: coop\n", ["datasets: missing"]),
    ("method: [coop\n", ["not valid YAML"]),
])
def test_invalid_grids_fail_whole_with_one_clear_error(tmp_path, body, expected):
    path = _grid(tmp_path, body)
    with pytest.raises(GridError) as e:
        load_grid(path)
    msg = str(e.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


def test_depth_beyond_the_backbone_is_an_impossible_cell(tmp_path):
    L = backbone_layers("mudpt-tiny")
    path = _grid(tmp_path, f"method: mudpt\ndataset: exp-test-a\noptions: {{depth: [1, {L + 1}]}}\n")
    with pytest.raises(GridError, match=rf"expected an integer in \[1, {L}\].*backbone mudpt-tiny has {L} layers"):
        load_grid(path)
    # the same file is fine on a deeper backbone
    assert len(load_grid(path, backbone="ViT-B-32").cells) == 2


def test_all_problems_are_reported_at_once(tmp_path):
    path = _grid(tmp_path, "method: mudtp\ndatasets: [nope]\nshots: 0\nrecipe: {lrr: 1}\n")
    with pytest.raises(GridError, match=r"\(4 problem\(s\)\)"):
        load_grid(path)


def test_unknown_grid_name_lists_the_named_grids():
    with pytest.raises(GridError, match="named grids: .*ablation-depth"):
        load_grid("no-such-grid")


def test_blocks_suites_labels_and_backbone_override(tmp_path):
    path = _grid(tmp_path, """
name: mine
method: mudpt
datasets: [exp-test-a]
seeds: "1..2"
recipe: {epochs: 3}
cells:
  - {options: {fusion: ["off", bi]}, recipe: {lr: 0.01}}
  - {method: coop, seeds: [5]}
embedded:
  recipe: {batch_size: 8}
coop:
  datasets: [exp-test-b]
""")
    g = load_grid(path)
    assert g.name == "mine" and len(g.cells) == 2 * 2 + 1
    labels = sorted({c.label for c in g.cells})
    assert labels == ["coop", "mudpt", "mudpt[fusion=off]"]
    mudpt = [c for c in g.cells if c.config.method == "mudpt"]
    # recipe merges key by key: top level, suite section, then the block
    assert all(c.config.recipe_dict == {"epochs": 3, "batch_size": 8, "lr": 0.01} for c in mudpt)
    assert {c.config.seed for c in mudpt} == {1, 2}
    coop = [c for c in g.cells if c.config.method == "coop"]
    assert [c.config.seed for c in coop] == [5] and coop[0].config.recipe_dict == {"epochs": 3, "batch_size": 8}
    g2 = load_grid(path, data_root=str(tmp_path), backbone="ViT-B-32")
    assert {c.config.dataset for c in g2.cells} == {"exp-test-b"}
    assert g2.backbone.name == "ViT-B-32" and g2.backbone.pretrained == "openai"
    assert all(c.config.backbone == g2.backbone for c in g2.cells)


def test_cell_keys_are_stable_and_sensitive(tmp_path):
    a = _grid(tmp_path, "method: mudpt\ndataset: exp-test-a\noptions: {fusion: [bi, t2v], depth: 2}\n")
    b = tmp_path / "b.yaml"
    b.write_text("dataset: exp-test-a\noptions: {depth: 2, fusion: [bi, t2v]}\nmethod: mudpt\n")
    keys_a = [c.config.key() for c in load_grid(a).cells]
    assert keys_a == [c.config.key() for c in load_grid(a).cells]  # same file, same keys
    assert sorted(keys_a) == sorted(c.config.key() for c in load_grid(b).cells)  # key order does not matter
    assert len(set(keys_a)) == 2  # a switch changes the key
    for c in load_grid(a).cells:  # the queue ships configs as dicts: the round trip keeps the key
        assert RunConfig.from_dict(c.config.to_dict()).key() == c.config.key()


def test_build_grid_names_its_origin():
    with pytest.raises(GridError, match="^command line: shots"):
        from pathlib import Path

        build_grid({"method": "coop", "dataset": "exp-test-a", "shots": -1}, Path("command line"))


def test_toml_grids_work_like_yaml(tmp_path):
    y = _grid(tmp_path, "method: mudpt\ndataset: exp-test-a\noptions: {fusion: [bi, \"off\"]}\nseeds: [1, 2]\n")
    t = tmp_path / "same.toml"
    t.write_text('method = "mudpt"\ndataset = "exp-test-a"\nseeds = [1, 2]\n[options]\nfusion = ["bi", "off"]\n')
    assert [c.config for c in load_grid(t).cells] == [c.config for c in load_grid(y).cells]


def test_train_set_flags_split_into_switches_and_recipe():
    from experiments.commands import _parse_sets
    from mudpt.errors import UserError

    opts, rec = _parse_sets(["depth=3", "fusion=off", "lr=0.01", "recipe.epochs=5", "opt.ctx_init=a photo of a",
                             "layer0_t2v=false"])
    assert opts == {"depth": 3, "fusion": "off", "ctx_init": "a photo of a", "layer0_t2v": False}
    assert rec == {"lr": 0.01, "epochs": 5}
    with pytest.raises(UserError, match="KEY=VALUE"):
        _parse_sets(["depth"])
