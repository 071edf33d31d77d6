"""KFP v2 components: one thin shell per pipeline step around an `rglcd` function (docs/architecture.md 4).

Each step module defines one `@dsl.component` (lightweight style, `install_kfp_package=False`: the
step runs in the project image, which has rglcd, kfp and this package installed, so nothing is
pip-installed at pod start). The component bodies import `components.runtime` and `rglcd` at run
time; this package's `__init__` imports nothing, so that import stays light inside a pod.

    configure -> prep -> (pretrain_lrm) -> train -> evaluate -> register
"""
