export * from "./gen/nearby/v1/friend_service_pb.js";
export * from "./gen/nearby/v1/geo_pb.js";
export * from "./gen/nearby/v1/location_service_pb.js";
export * from "./gen/nearby/v1/nearby_service_pb.js";
export * from "./gen/nearby/v1/presence_service_pb.js";
export * from "./gen/nearby/v1/user_pb.js";
