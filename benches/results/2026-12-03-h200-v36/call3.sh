#!/usr/bin/env bash
# v36 call 3: FA4 part a2 (joins a1 from call 2, same warm machine).
set -u
bash fa4kit/a2/stage.sh 2>&1 | tail -1 | tee ${OUT:?}/log.txt
