# The fairray worker image: every node of a cluster (Ray cluster launcher or KubeRay) runs it, so the cluster has
# exactly the versions pinned in pyproject.toml. Base: the official Ray image of the pinned Ray release, GPU build
# (CUDA), Python 3.11; fairray is installed from its wheel, which pins torch, torchaudio, Ray, Optuna and MLflow.
#
#   pip wheel --no-deps -w dist .                       # dist/fairray-0.1.0-py3-none-any.whl
#   docker build -t <registry>/fairray-worker:0.1.0 .   # the tag is fairray's version
#   docker push <registry>/fairray-worker:0.1.0
#
# tests/cloud/test_cluster_files.py checks that the Ray tag and the wheel's version equal pyproject.toml's pins and
# that the wheel installs; the image itself is not built in CI (no Docker daemon there).
FROM rayproject/ray:2.60.0-py311-gpu

ARG FAIRRAY_VERSION=0.1.0
COPY --chown=ray:users dist/fairray-${FAIRRAY_VERSION}-py3-none-any.whl /tmp/
# [cluster]: Ray's dashboard, job API and autoscaler (ray[default]) at the pinned release; boto3 and the Google API
# client: what the launcher's autoscaler on the head calls to add and remove AWS or GCP nodes.
RUN pip install --no-cache-dir "/tmp/fairray-${FAIRRAY_VERSION}-py3-none-any.whl[cluster]" \
      "boto3>=1.34" "google-api-python-client>=2.100" \
 && rm /tmp/fairray-${FAIRRAY_VERSION}-py3-none-any.whl \
 && python -c "import fairray, ray, torch; assert ray.__version__ == '2.60.0', ray.__version__"

# Never a credential in the image: MLflow, bucket and Ray token come from the node's environment or the platform's
# credential chain (instance profile, workload identity) at run time.
ENV RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
