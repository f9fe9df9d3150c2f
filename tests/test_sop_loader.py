"""SOP definitions are data, validated at load: a broken file is refused with its file, line and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from subdomaind.workflows.sop import SOP_DIR, SopError, load_sop, parse_sop

GOOD = (SOP_DIR / "trenggalek.toml").read_text(encoding="utf-8")


def test_shipped_sops_load() -> None:
    for name in ("trenggalek", "kalbar"):
        sop = load_sop(name)
        assert sop.start in sop.steps
    assert len([s for s in load_sop("kalbar").steps.values() if s.sop_no]) >= 13


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('on = { approve = "disposisi_kabid", reject = "ditolak" }',
                             'on = { approve = "tidak_ada", reject = "ditolak" }'),
         "on.approve leads to unknown step 'tidak_ada'"),
        (lambda t: t.replace('actor = "kadis"\ntime = "1 hari"', 'actor = "bupati"\ntime = "1 hari"', 1),
         "actor role 'bupati' is not defined"),
        (lambda t: t + '\n[steps.yatim]\ntitle = "tak terjangkau"\nkind = "notification"\nactor = "kasi"\nnext = "selesai"\n',
         "step 'yatim' is unreachable"),
        (lambda t: t.replace('[steps.terima]\ntitle = "Menerima permohonan dan meneruskan kepada Kepala Dinas untuk '
                             'mendapatkan disposisi"\nsop_no = "3"\nkind = "notification"\nactor = "sekretaris"\n'
                             'time = "15 menit"\nnext = "disposisi"',
                             '[steps.terima]\ntitle = "x"\nkind = "notification"\nactor = "sekretaris"'),
         "step 'terima': leads nowhere"),
        (lambda t: t.replace('time = "1 hari"', 'time = "sebentar"', 1), "is not like '2 hari'"),
        (lambda t: t.replace('kind = "approval"', 'kind = "persetujuan"', 1), "unknown kind 'persetujuan'"),
        # Shapes the models declare: a misspelt key, a value of the wrong type, a role that is not a table.
        (lambda t: t.replace('time = "1 hari"', 'tiem = "1 hari"', 1), "step 'disposisi': tiem: Extra inputs"),
        (lambda t: t.replace('time = "1 hari"', 'time = 1', 1), "step 'disposisi': time: Input should be a valid string"),
        (lambda t: t.replace('kadis = { title = "Kepala Dinas Komunikasi dan Informatika" }', 'kadis = 5'),
         "role 'kadis': must be a table"),
    ],
)
def test_a_broken_sop_names_file_line_and_problem(tmp_path: Path, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    text = edit(GOOD)
    assert text != GOOD
    path = tmp_path / "rusak.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SopError) as err:
        parse_sop(text, path)
    message = str(err.value)
    assert message.startswith(f"{path}:") and expected in message
    line = message.split(":")[1]
    assert line.isdigit() and int(line) > 0


def test_daemon_refuses_to_start_on_a_broken_sop(tmp_path: Path) -> None:
    from subdomaind.daemon.config import ConfigError, parse_config
    from tests.devkit.localoffice import config_data

    broken = tmp_path / "rusak.toml"
    broken.write_text(GOOD.replace('start = "cek_kelengkapan"', 'start = "awal"'), encoding="utf-8")
    data = config_data(tmp_path)
    data["agency"][0]["sop"] = str(broken)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert f"{broken}:" in str(err.value) and "start step 'awal' is not defined" in str(err.value)
