# Sourced by the scripts that run ON the GPU host after the wheels are installed into $SITE: PY is the host's
# Python with torch (or $PY when set), and the CUDA 13 runtime libraries the wheel links against (from the
# host's torch) go on LD_LIBRARY_PATH with $SITE on PYTHONPATH.
if [[ -n "${PY:-}" ]]; then :
elif [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python
else PY=python3; fi
CU13=$("$PY" -c 'import site,os;print(next((os.path.join(p,"nvidia","cu13","lib") for p in site.getsitepackages() if os.path.isdir(os.path.join(p,"nvidia","cu13","lib"))),""))')
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CU13" PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
