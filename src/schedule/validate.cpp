// Implementation of pipetrain/schedule/validate.h: being written.
