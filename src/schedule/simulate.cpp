// Implementation of pipetrain/schedule/simulate.h: being written.
