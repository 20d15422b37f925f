# Image for the ML backend and the RQ workers (same code, different command).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 MODEL_DIR=/models
WORKDIR /app

# CPU-only torch keeps the image ~4 GB smaller than the default CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.9.1" "torchvision==0.24.1"
COPY pyproject.toml README.md ./
COPY xmodal ./xmodal
COPY backend ./backend
COPY workers ./workers
COPY label_config ./label_config
RUN pip install .

EXPOSE 9090
CMD ["xmodal", "serve", "--host", "0.0.0.0", "--port", "9090"]
