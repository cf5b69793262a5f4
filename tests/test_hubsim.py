"""The Hub at 512 GPUs, simulated: 4,096 readers read their real piece lists through the real
`ranges.get` on a virtual clock against a Hub that keeps a resolvers quota and signs URLs that
expire (lmstream.tools.hubsim)."""
from lmstream.corpus import signed
from lmstream.tools.hubsim import SimShape, fineweb_like, simulate


def _run(**kw):
    shape = SimShape(gpus=512, files=120, groups_per_file=1500, **kw)
    return simulate(fineweb_like(shape), shape)


def test_512_gpus_fit_the_anonymous_quota_with_urls_expiring_mid_run():
    # URLs live 5 minutes here (an hour on the Hub), so each file's is refreshed several times
    folder = signed.shared_folder()    # a run earlier in this process may have set one
    got = _run(minutes=20, url_lifetime=300)
    assert got["reads"] > 90_000 and got["failed_reads"] == 0 and got["refused_429"] == 0
    assert got["resolves"] / got["reads"] <= 0.05
    assert got["max_per_window"] <= 100            # quota 3,000
    assert got["resolves"] > got["files_resolved"]      # refreshed as they expired
    assert signed.lookup(fineweb_like(SimShape(files=1)).shards[0].url) is None
    assert signed.shared_folder() == folder    # nothing leaks out


def test_without_reuse_the_same_run_is_refused():
    got = _run(minutes=10, sharing="none")
    assert got["resolves"] == got["reads"] and got["refused_429"] > 1000
    assert got["max_per_window"] > 3000
