#!/usr/bin/env bash
# Add teacher reasoning traces to an MPCC train build, then preview them:
#   data_prep/annotate.sh TRAIN_BUILD OUT TEACHER [mpcc annotate options, e.g. --mode blind --tries 4]
# TEACHER is a local model (path or hub name) or an OpenAI-compatible endpoint, e.g. a vLLM server:
#   vllm serve Qwen/Qwen2.5-VL-72B-Instruct --port 8000   ->   TEACHER=http://localhost:8000/v1
# An endpoint's API key comes from MPCC_TEACHER_API_KEY (or OPENAI_API_KEY). A stopped run resumes
# when started again (progress in OUT.annotate/).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TRAIN_BUILD OUT TEACHER [mpcc annotate options...]" >&2
  exit 2
fi
train=$1 out=$2 teacher=$3
shift 3
mpcc annotate "$train" --teacher "$teacher" --out "$out" "$@"
mpcc inspect "$out" --out "${out}_preview"
