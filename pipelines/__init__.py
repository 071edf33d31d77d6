"""The RG-LCD Kubeflow pipeline: build the DAG from a config, compile it, run it locally with
`kfp.local`, submit it to a KFP cluster and schedule recurring retraining.

`rglcd/` never imports this package; `rglcd pipeline ...` imports it inside its command functions.
"""
