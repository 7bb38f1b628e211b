// Implementation of pipetrain/schedule/generators.h: being written.
