#!/bin/bash
# Lambda handler for the proxy: the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs
# this script, waits for /health, then forwards each invocation over HTTP with response streaming.
# The protocol choices are explicit so uvicorn never tries imports the proxy does not use (uvloop,
# httptools, websockets: not in the layer; where installed, they only add cold-start time).
PATH=$PATH:$LAMBDA_TASK_ROOT/bin \
PYTHONPATH=$PYTHONPATH:/opt/python:$LAMBDA_RUNTIME_DIR:$LAMBDA_TASK_ROOT \
exec python3 -m uvicorn --host 127.0.0.1 --port="${PORT:-8000}" --no-access-log --timeout-keep-alive 900 \
  --loop asyncio --http h11 --ws none --lifespan on app:app
