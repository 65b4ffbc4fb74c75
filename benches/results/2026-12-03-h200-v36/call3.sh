#!/usr/bin/env bash
# v36 call 3: FA4 part a1 and part b's files copied to /tmp (a1 + b + the tracked tree fit the
# carry; calls 3 and 4 must be back to back on the same warm machine). Call 2's a1 staging was
# lost: the machine was released before the next call (idle 30 s).
set -u
out=${OUT:?}
bash fa4kit/a1/stage.sh 2>&1 | tail -1 | tee $out/log.txt
rm -rf /tmp/fa4kit_b && cp -r fa4kit/b /tmp/fa4kit_b && echo "fa4 part b copied" | tee -a $out/log.txt
