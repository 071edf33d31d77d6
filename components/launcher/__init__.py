"""The training-job launcher: not a KFP component, but the Kubernetes-client code that the multi-node training
step (components/train.py `launch_training`) and a person at a shell use to run RG-LCD training as a
Kubeflow PyTorchJob or TrainJob, watch it to its end and clean it up. rglcd/ never imports kubernetes, so
this lives in components/ (docs/architecture.md 1).

    objects.py   the job and its ConfigMap from the config (pure; pod settings from components/podspec.py)
    api.py       create, watch, diagnose unschedulable pods, delete (on SIGTERM too); PERMISSIONS it needs
    staging.py   job name per KFP run, inputs staged on the shared PVC, `rglcd train` arguments
    __main__.py  the command line: python -m components.launcher --name NAME [--dry-run] ...

Why not the Kubeflow SDKs. Both install beside kfp's pins (checked with `pip install --dry-run`:
kubeflow-training 1.9.4 adds only `retrying`; kubeflow 0.5.0 adds kubeflow-trainer-api and
kubeflow-katib-api), but neither does what this module needs:
- Training Operator SDK (`kubeflow.training.TrainingClient`): covers PyTorchJob only; `create_job` takes its
  own generated models or builds a job from a Python function that pip-installs packages at pod start;
  `wait_for_job_conditions` polls every 15 s and raises a bare RuntimeError on Failed, saying nothing about
  pods the scheduler cannot place - the most common first-day failure, which `api.wait` diagnoses from
  FailedScheduling events and turns into the config key to change.
- Kubeflow Trainer SDK (`kubeflow.trainer.TrainerClient`): covers TrainJob only, builds it from its own
  runtime/trainer types, and has no way to pass the runtimePatches this project needs (training
  ServiceAccount, restricted security contexts, the PVC and ConfigMap volumes, GPU-pool tolerations).
Create, get and delete are one CustomObjectsApi call each here; two SDKs (one per kind) would replace three
calls and add the diagnosis back on top.
"""
