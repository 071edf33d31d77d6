"""The code MLflow runs to build the pyfunc model (mlflow "models from code"; rglcd/registry/pyfunc.py)."""
import mlflow

from rglcd.registry.pyfunc import StudentModel

mlflow.models.set_model(StudentModel())
