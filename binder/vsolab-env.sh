# Sourced by binder/postBuild and binder/start: where the lab's binaries live in the image.
# In the conda env rather than under $HOME, so a JupyterHub that mounts a persistent home
# over /home/jovyan does not hide them. labkit reads VSOLAB_CACHE (labkit/install/_products.py cache_root).
if [ -z "${VSOLAB_CACHE:-}" ] && [ -n "${NB_PYTHON_PREFIX:-}" ]; then
  export VSOLAB_CACHE="${NB_PYTHON_PREFIX}/share/vsolab"
fi
