# Image for the ML backend and the RQ workers (same code, different command): exactly uv.lock,
# no PyTorch (images and MiniLM run on ONNX Runtime), everything from PyPI.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MODEL_DIR=/models \
    UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app

# the pinned uv, hash-checked (what scripts/uv.sh installs outside Docker)
COPY requirements/uv.txt /tmp/uv.txt
RUN pip install --no-deps --require-hashes -r /tmp/uv.txt

# the dependencies first: a code change does not reinstall them
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-install-project
COPY xmodal ./xmodal
COPY backend ./backend
COPY workers ./workers
COPY label_config ./label_config
# editable: the code finds label_config/ next to its package folders, here in /app
RUN uv sync --locked

EXPOSE 9090
CMD ["xmodal", "serve", "--host", "0.0.0.0", "--port", "9090"]
