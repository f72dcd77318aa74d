-- wrk script: POST an enqueue body to the URL given on the command line.
-- BENCH_BODY overrides the body; BENCH_STOP_AFTER stops each wrk thread after
-- that many answers (0: run for wrk's -d duration) and says so on stderr: wrk
-- itself would sleep out the whole -d, so the driver interrupts it (SIGINT makes
-- wrk print its summary over the time actually spent) once every thread is done.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"content":{}}'
wrk.headers["Content-Type"] = "application/json"

local stop_after = tonumber(os.getenv("BENCH_STOP_AFTER") or "0")
local answers = 0

function response(status, headers, body)
  answers = answers + 1
  if stop_after > 0 and answers == stop_after then
    io.stderr:write("thread done\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
end
