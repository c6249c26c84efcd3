"""workdir.check_free_space says how much room is missing, with sizes that visibly differ."""

import shutil

import pytest

from lgnet_jax import workdir as workdir_lib

MIB = 2**20


@pytest.mark.parametrize(
    'free, needed, sizes',
    [
        (10 * MIB, 100 * MIB, 'has 10 MiB free but a checkpoint needs about 100 MiB (90 MiB more)'),
        (
            int(3.40 * MIB),
            int(3.45 * MIB),
            'has 3.4 MiB free but a checkpoint needs about 3.45 MiB (51.2 KiB more)',
        ),
        (
            3 * MIB,
            3 * MIB + 1,
            'has 3145728 bytes free but a checkpoint needs about 3145729 bytes (1 byte more)',
        ),
        (
            2**30,
            3 * 2**30 // 2,
            'has 1 GiB free but a checkpoint needs about 1.5 GiB (512 MiB more)',
        ),
    ],
)
def test_the_message_tells_both_sizes_apart_and_the_shortfall(
    tmp_path, monkeypatch, free, needed, sizes
):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(workdir_lib.shutil, 'disk_usage', lambda path: usage._replace(free=free))
  with pytest.raises(workdir_lib.WorkdirError) as info:
    workdir_lib.check_free_space(tmp_path / 'run', needed)
  assert str(info.value) == (
      f'workdir {tmp_path / "run"} {sizes}; free some space or choose another --workdir'
  )
  workdir_lib.check_free_space(tmp_path / 'run', free)  # exactly enough
