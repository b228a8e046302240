#!/bin/bash
# Merge the run's Parquet files into the comparison report (report.md, report.html).
#
#   Torque, PBS Pro:  qsub -v FMNIST_RUN=$PWD/outputs/quick,FMNIST_PROFILE=quick pbs/report.sh
#   Slurm:            sbatch --export=ALL,FMNIST_RUN=$PWD/outputs/quick pbs/report.sh
#   no scheduler:     bash pbs/report.sh
#
# FMNIST_RUN: run directory (default outputs/<profile>); FMNIST_PROFILE: quick|full (default
# quick); FMNIST_VENV: the project's virtualenv (default .venv).
# The command's arguments come from the profile in jobs/pipeline.toml (`fmnist-batch step`),
# so this job does exactly what `fmnist-batch run` does for the same task.
#PBS -N report
#PBS -l walltime=00:30:00
#PBS -l nodes=1:ppn=2
#PBS -j oe
#SBATCH --job-name=report
#SBATCH --time=00:30:00
#SBATCH --nodes=1
# ppn=2 in Slurm's words (sbatch reads the #PBS lines too): two tasks' worth of CPUs.
#SBATCH --ntasks=2
#SBATCH --output=%x.o%j
set -e
cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}"
source "${FMNIST_VENV:-.venv}/bin/activate"
exec fmnist-batch step report
