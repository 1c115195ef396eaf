// How each kind of object is named on screen, the same everywhere.

import {ApiError, all} from "./api.js";
import {bytes} from "./dom.js";

export const CLOUD_TYPES = ["aws", "azure", "vsphere", "vcloud"];
export const STATES = ["not_started", "running", "error", "success"];
export const OPERATING_SYSTEMS = ["linux", "windows"];

/** A workload's os: null until told or found by a check. */
export function osLabel(os) {
  return os || "unknown";
}

export function login(credentials) {
  if (!credentials) return "—";
  return credentials.domain ? `${credentials.domain}\\${credentials.username}` : credentials.username;
}

export function credentialsLabel(credentials) {
  return `${login(credentials)} (credentials ${credentials.id})`;
}

export function volumeLabel(volume) {
  return `${volume.name} (${bytes(volume.size)})`;
}

export function targetLabel(target) {
  return target ? `${target.cloud_type} target ${target.id}` : "—";
}

export function named(map, id, label) {
  const found = map.get(id);
  return found ? label(found) : `#${id}`;
}

/** A list the service may not offer (an older service): empty then. */
export async function allIfOffered(path, filters) {
  try {
    return await all(path, filters);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) return null;
    throw error;
  }
}

export const SIZE_HINT = "Bytes, or with a unit: 100 GB, 50 GiB, 512 MiB…";
