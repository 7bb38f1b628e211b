// Implementation of pipetrain/schedule/passes.h: being written.
