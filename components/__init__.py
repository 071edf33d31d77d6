"""KFP v2 components: one thin shell per pipeline step around an `rglcd` function (docs/architecture.md 4).

Each step module defines one `@dsl.component` (lightweight style, `install_kfp_package=False`: the
step runs in the project image, which has rglcd, kfp and this package installed, so nothing is
pip-installed at pod start). The component bodies import `rglcd` and the kfp-free helper modules at
run time: `step_config` (the config parameter), `dvc_io` (push/pull by DVC pointer), `artifacts` (copy
into artifact paths), `publish` (a finished training as artifacts), `podspec` (pod settings every pod
shares); `launcher/` (not a component) runs multi-node training as a PyTorchJob or TrainJob. This
package's `__init__` imports nothing, so that import stays light inside a pod.

    configure -> prep -> (pretrain_lrm) -> train -> evaluate -> register -> (canary rollout)
"""
