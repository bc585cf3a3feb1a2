import gc, sys
sys.path.insert(0, ".")
from conftest import make_tiny_pair
import adasd_jax
def maps(): return sum(1 for _ in open("/proc/self/maps"))
for mb in (int(sys.argv[1]),):  # usage: python engine/bucket-maps.py MAX_BUCKETS [clear]
    pair = make_tiny_pair(); pair.max_buckets = mb
    base = maps()
    for n in (5, 20, 40, 70, 5, 20):
        for m in ("sd:K=3", "adasd"):
            adasd_jax.generate(pair, [list(range(3, 3 + n))], method=m, max_new_tokens=8)
        gc.collect()
        if len(sys.argv) > 2: import jax; jax.clear_caches(); gc.collect()
        print(mb, n, len(pair.compiled), maps() - base, flush=True)
