#!/usr/bin/python3
"""CUDA sources into plain C++ for the CPU emulation (tests/gpu/emu/emu_cuda.h).

    translate.py OUTDIR FILE.cu...   ->  OUTDIR/FILE.cpp for each

Two rewrites, nothing else: a launch `k<<<grid, block[, smem[, stream]]>>>(args)`
becomes `emu::Launch(grid, block[, smem[, stream]])(k, args)`, and
`extern __shared__ T name[];` becomes a pointer to the launch's dynamic shared
memory. A `#line` keeps compiler messages pointing at the .cu file. An output
whose text would not change is left alone (its time stamp too), so builds that
compare time stamps (build_partita_emu.sh) skip it.
"""
import os
import re
import sys


def translate(text):
    text = re.sub(r'([\w:]+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(', r'emu::Launch(\2)(\1, ', text, flags=re.S)
    text = re.sub(r'extern __shared__ (\w+) (\w+)\[\];', r'\1 *\2 = (\1 *)emu::dyn_smem();', text)
    return text


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: translate.py OUTDIR FILE.cu...")
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    for src in argv[2:]:
        with open(src) as f:
            text = f'#line 1 "{src}"\n' + translate(f.read())
        dst = os.path.join(out, os.path.basename(src)[:-3] + '.cpp')
        try:
            with open(dst) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        with open(dst + '.tmp', 'w') as f:
            f.write(text)
        os.replace(dst + '.tmp', dst)


if __name__ == '__main__':
    main(sys.argv)
